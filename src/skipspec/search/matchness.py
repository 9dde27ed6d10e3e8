"""Scoring a skip set on text the model already generated: one parallel skip-mode forward.

The context is W generated tokens starting at slot/position `start`. Their full-model KV is
committed in the request's cache, but the draft must not see it: a draft sees the full model's KV
only for the prefix before it starts. So the scoring forward re-reads the W tokens in skip mode,
writes their KV to scratch slots past the committed ones (which the next draft or verify step
overwrites; nothing is copied), and each query sees the committed slots [0, start) plus the
scratch slots of itself and the earlier context tokens, at their original positions.

Query i predicts token start+i+1; the target is what the model actually emitted there. Greedy:
that is the full model's argmax, so top-1 agreement is SWIFT's matchness. Sampling: the emitted
token is one draw y ~ p, so `1[draft top-1 == y]` is an unbiased but noisy estimate of
p(draft top-1); the search uses p itself (one full-model forward per context, reused by every
candidate), which is exactly the chain token's acceptance probability (see `verify/logits.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..config import SamplingParams
from ..model.adapter import Frame, ModelAdapter
from ..model.cache import KVCache
from ..model.skipset import SkipSet
from ..verify import SamplingInputs, process_logits, sampling_program
from .objective import DraftRule, Profile

#: logits (Q, vocab) float32 of a frame's queries with a skip set: `adapter.forward` on the request's
#: cache, or the GPU runtime's scoring graph.
Forward = Callable[[Frame, SkipSet], torch.Tensor]


@dataclass(frozen=True)
class Context:
    """W generated tokens to score on: inputs tokens[start : start+W], targets tokens[start+1 : start+W+1]."""

    start: int
    inputs: tuple[int, ...]
    targets: tuple[int, ...]

    @classmethod
    def of(cls, tokens, start: int, width: int) -> Context:
        return cls(start, tuple(tokens[start : start + width]), tuple(tokens[start + 1 : start + width + 1]))

    @property
    def width(self) -> int:
        return len(self.inputs)


def context_frame(ctx: Context, committed: int, device: torch.device | str) -> Frame:
    """The scoring forward's geometry: writes at slots [committed, committed + W).

    >>> f = context_frame(Context(2, (5, 6), (6, 7)), committed=4, device="cpu")
    >>> f.allowed.int().tolist()
    [[1, 1, 0, 0, 1, 0], [1, 1, 0, 0, 1, 1]]
    >>> f.positions.tolist(), f.key_positions.tolist()
    ([2, 3], [0, 1, 2, 3, 2, 3])
    """
    w = ctx.width
    positions = torch.arange(ctx.start, ctx.start + w, device=device)
    prefix = torch.zeros(w, committed, dtype=torch.bool, device=device)
    prefix[:, : ctx.start] = True
    return Frame(
        input_ids=torch.tensor([ctx.inputs], device=device),
        positions=positions,
        write_start=committed,
        allowed=torch.cat([prefix, torch.ones(w, w, dtype=torch.bool, device=device).tril()], dim=1),
        key_positions=torch.cat([torch.arange(committed, device=device), positions]),
    )


def target_probs(full_logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """(W, vocab) the target distribution at each context position (sampling only)."""
    values = SamplingInputs.of(sampling, full_logits.device)
    return process_logits(full_logits, sampling_program(sampling), values).softmax(dim=-1)


def profile_of(
    logits: torch.Tensor, targets: torch.Tensor, rule: DraftRule, sampling: SamplingParams, p: torch.Tensor | None
) -> Profile:
    """A skip-mode forward's logits (W, vocab) -> per-position acceptance, as the drafter would see them.

    The drafter ranks candidates by its processed distribution (`process_logits`, then softmax), so
    this does too. Greedy: `targets` (W,) are the emitted tokens. Sampling: `p` (W, vocab) is the
    target distribution. One host transfer.
    """
    values = SamplingInputs.of(sampling, logits.device)
    top = process_logits(logits, sampling_program(sampling), values).softmax(dim=-1).topk(rule.topk, dim=-1)
    if p is None:
        hits = (top.indices == targets[:, None]).float()  # (W, topk): at most one 1 per row
    else:
        hits = p.gather(1, top.indices)  # (W, topk): target mass of each candidate
    host = torch.cat([top.values[:, :1], hits], dim=1).cpu().numpy().astype(np.float64)
    confidence, hits = host[:, 0], host[:, 1:]
    widths = np.array([rule.width(float(c)) for c in confidence])
    ranks = np.arange(hits.shape[1])[None, :]
    sibling = (hits * ((ranks >= 1) & (ranks < widths[:, None]))).sum(axis=1)
    return Profile(hits[:, 0].copy(), sibling, confidence)


def score_skip_set(
    forward: Forward,
    frame: Frame,
    targets: torch.Tensor,
    skip: SkipSet,
    rule: DraftRule,
    sampling: SamplingParams,
    p: torch.Tensor | None = None,
) -> Profile:
    """One parallel skip-mode forward over the context; its `Profile`."""
    return profile_of(forward(frame, skip), targets, rule, sampling, p)


def influence(adapter: ModelAdapter, cache: KVCache, frame: Frame) -> tuple[np.ndarray, torch.Tensor]:
    """One full forward over the context: each slot's relative update size, and the logits.

    For every inner sublayer, mean over positions of |update| / |residual stream it is added to|
    (the residual-update form of ShortGPT's block influence): a sublayer that barely moves the
    residual is a cheap candidate to skip. It only orders the speed search's first sweep; every
    set is then scored for real. Read with forward hooks on the layer's own submodules (which
    the adapter calls in the family's order): the residual enters `input_layernorm` and the MLP's
    input norm; the update leaves `self_attn` / `mlp` (or their post-norms in Gemma's sandwich).
    Returns slot values in `SkipSet.from_slots` order.
    """
    n = adapter.num_layers - 2
    sandwich = adapter.spec.sandwich_norms
    seen: dict[tuple[str, int], torch.Tensor] = {}

    def size(x) -> torch.Tensor:
        return (x[0] if isinstance(x, tuple) else x).float().norm(dim=-1).mean()

    def residual(key):
        return lambda module, args: seen.__setitem__(key, size(args[0]))

    def update(key):
        return lambda module, args, out: seen.__setitem__(key, size(out))

    handles = []
    for a, layer in enumerate(adapter.layers[1:-1]):
        m = n + a
        handles += [
            layer.input_layernorm.register_forward_pre_hook(residual(("r", a))),
            (layer.pre_feedforward_layernorm if sandwich else layer.post_attention_layernorm).register_forward_pre_hook(
                residual(("r", m))
            ),
            (layer.post_attention_layernorm if sandwich else layer.self_attn).register_forward_hook(update(("u", a))),
            (layer.post_feedforward_layernorm if sandwich else layer.mlp).register_forward_hook(update(("u", m))),
        ]
    try:
        logits = adapter.forward(frame, cache, SkipSet.empty())
    finally:
        for h in handles:
            h.remove()
    if len(seen) != 4 * n:  # a compiled or graph-replayed forward runs no hooks
        return np.full(2 * n, np.nan), logits
    sizes = torch.stack([seen[k, s] for k in ("r", "u") for s in range(2 * n)]).cpu().numpy().reshape(2, 2 * n)
    return sizes[1] / np.maximum(sizes[0], 1e-12), logits


def influence_from_sizes(sizes: np.ndarray) -> np.ndarray:
    """`influence`'s slot values from sizes measured inside a forward: `(4, layers)`, rows = the
    residual under each attention sublayer, its update, the residual under each MLP, its update
    (`ModelAdapter.forward_static`'s `sizes`, weighted to a mean over the queries)."""
    inner = sizes[:, 1:-1]
    residual, update = np.concatenate([inner[0], inner[2]]), np.concatenate([inner[1], inner[3]])
    return update / np.maximum(residual, 1e-12)
