"""The fixed-shape step programs that the graph runtime captures, and their persistent inputs.

Each program builds its whole frame on the device from a few persistent tensors (the query
position, the tree's packed layout, the candidates), runs the model, and reduces the logits to
the little the host needs, so a replay reads nothing from the host and the host reads one small
tensor back. Shapes: C = the cache capacity, B = the step's bucket, K = top-k, L = layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model.adapter import ModelAdapter, Sublayers
from ..model.cache import KVCache
from ..model.skipset import NO_SKIP, SkipSet
from ..tree import TreeFrame, doublings, tree_frame
from ..verify import SamplingInputs, SamplingProgram, process_logits, verify_tree
from .device_drafting import DeviceTreeShape, DraftingInputs, draft_tree, learn


@dataclass(frozen=True)
class StepInputs:
    """Persistent device buffers shared by every graph captured against one cache.

    cols:   (C,) 0..C-1; slot indices, and the position each committed slot holds
    pos:    (1,) a draft step's query position (= the slot it writes)
    token:  (1, 1) a draft step's input token
    root:   (1,) the last emitted token, not yet in the cache (the verify step rewrites it)
    sampling: the request's seed, temperature, top-k and top-p (`verify.SamplingInputs`), staged at
            the prefill: steps are captured per `SamplingProgram`, never per value
    cand:   (D, K) draft candidates per depth, best first
    tree:   (2 + 2 * Bmax,) the verify step's `pack_tree` list
    keep:   (2, L) int64, nonzero where the scoring forward keeps an attention / MLP sublayer
    score_ids, score_pos, score_slots: (Smax,) the scoring forward's tokens, positions and slots
    score_allowed: (Smax, C) bool; score_keys: (C,) position held by each slot
    score_weights: (Smax,) float32, 1/q on a scoring forward's q real queries, 0 on padding
    sizes: (4, L) float32, a measuring scoring forward's sublayer sizes (see `ModelAdapter.forward_static`)
    """

    cols: torch.Tensor
    pos: torch.Tensor
    token: torch.Tensor
    root: torch.Tensor
    sampling: SamplingInputs
    cand: torch.Tensor
    tree: torch.Tensor
    keep: torch.Tensor
    score_ids: torch.Tensor
    score_pos: torch.Tensor
    score_slots: torch.Tensor
    score_allowed: torch.Tensor
    score_keys: torch.Tensor
    score_weights: torch.Tensor
    sizes: torch.Tensor

    @classmethod
    def allocate(
        cls, capacity: int, depth: int, topk: int, tree_max: int, score_max: int, layers: int, device
    ) -> StepInputs:
        long = dict(dtype=torch.long, device=device)
        return cls(
            cols=torch.arange(capacity, device=device),
            pos=torch.zeros(1, **long),
            token=torch.zeros(1, 1, **long),
            root=torch.zeros(1, **long),
            sampling=SamplingInputs.allocate(device),
            cand=torch.zeros(depth, topk, **long),
            tree=torch.zeros(2 + 2 * tree_max, **long),
            keep=torch.ones(2, layers, **long),
            score_ids=torch.zeros(score_max, **long),
            score_pos=torch.zeros(score_max, **long),
            score_slots=torch.zeros(score_max, **long),
            score_allowed=torch.zeros(score_max, capacity, dtype=torch.bool, device=device),
            score_keys=torch.zeros(capacity, **long),
            score_weights=torch.zeros(score_max, device=device),
            sizes=torch.zeros(4, layers, device=device),
        )

    @property
    def rounds(self) -> int:
        """Pointer-doubling rounds for every bucket (one count: a compiled frame serves them all)."""
        return doublings((self.tree.shape[0] - 2) // 2)


def static_tree_frame(inp: StepInputs, bucket: int, vocab_size: int, holes: bool = False) -> TreeFrame:
    """The verify frame of the tree staged in `inp.tree` (`buckets.pack_tree`), over the whole cache.

    The root's token is the one on the device (`inp.root`): the host never needs to know it.
    holes: tokens of -1 are nodes left out (`tree.tree_frame`), as drafting steps lay trees out.
    """
    committed, n = inp.tree[0], inp.tree[1]
    tokens = torch.cat([inp.root, inp.tree[3 : 2 + bucket]])
    parents = inp.tree[2 + bucket : 2 + 2 * bucket]
    return tree_frame(committed, n, tokens, parents, inp.cols, vocab_size, inp.rounds, holes)


def verify_tail(
    logits: torch.Tensor,
    f: TreeFrame,
    program: SamplingProgram,
    values: SamplingInputs,
    topk: int,
    root: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`verify.verify_tree`, and the bonus token written to `root`: `(Verdict.packed, .path, .topk)`."""
    verdict = verify_tree(logits, f, program, values, topk)
    root.copy_(verdict.packed[1:2])
    return verdict.packed, verdict.path, verdict.topk


def draft_tail(
    logits: torch.Tensor,
    program: SamplingProgram,
    values: SamplingInputs,
    token: torch.Tensor,
    pos: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` candidates and `[top-1 probability, top-1 token]`; advances `token` and `pos` to the chain's next."""
    top = process_logits(logits, program, values).softmax(dim=-1).topk(k, dim=-1)
    head = torch.stack([top.values[0, 0], top.indices[0, 0].to(top.values.dtype)])
    token.copy_(top.indices[:, :1])
    pos.add_(1)
    return top.indices[0], head


@dataclass(frozen=True)
class StepFunctions:
    """A step program's own tensor work around the model forward: a few dozen tiny kernels each
    when run as they are, a handful when the runtime passes compiled copies (`runtime.fuse`)."""

    frame: Callable = static_tree_frame
    verify_tail: Callable = verify_tail
    draft_tail: Callable = draft_tail
    draft_tree: Callable = draft_tree
    learn: Callable = learn


PLAIN_STEP_FUNCTIONS = StepFunctions()


def verify_step(
    adapter: ModelAdapter,
    cache: KVCache,
    inp: StepInputs,
    bucket: int,
    program: SamplingProgram,
    topk: int,
    sublayers: Sublayers | None = None,
    fns: StepFunctions = PLAIN_STEP_FUNCTIONS,
    holes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-model forward over the padded tree, acceptance, and the commit of the accepted path.

    Returns `(Verdict.packed, Verdict.topk, the frame's tokens)` for this bucket; rewrites `inp.root`
    with the bonus token.
    """
    f = fns.frame(inp, bucket, adapter.vocab_size, holes)
    slots = inp.tree[0] + inp.cols[:bucket]
    cache.prepare_slots(slots, cache.capacity)
    logits = adapter.forward_static(
        f.tokens.clamp(min=0)[None], f.positions, f.allowed, f.key_positions, cache, NO_SKIP, sublayers=sublayers
    )
    packed, path, top = fns.verify_tail(logits, f, program, inp.sampling, topk, inp.root)
    if bucket > 1:
        # Move B slots whatever the path length: entries past it land past the committed length.
        cache.move_slots(slots[0] + path.clamp(max=bucket - 1), slots)
    return packed, top, f.tokens


def drafting_step(
    adapter: ModelAdapter,
    cache: KVCache,
    inp: StepInputs,
    drafting: DraftingInputs,
    shape: DeviceTreeShape,
    bucket: int,
    program: SamplingProgram,
    topk: int,
    sublayers: Sublayers | None = None,
    fns: StepFunctions = PLAIN_STEP_FUNCTIONS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draft a tree on the device, verify it, learn from it (`runtime.device_drafting`).

    Reads the committed length from `inp.tree[0]`, the root from `inp.root`, the context from
    `drafting.history`; leaves all three, and the successor table, as the next step needs them,
    so steps can be replayed back to back with nothing from the host. Returns `verify_step`'s.
    """
    fns.draft_tree(inp.tree, inp.root, drafting, shape, bucket)
    packed, top, tokens = verify_step(adapter, cache, inp, bucket, program, topk, sublayers, fns, holes=True)
    fns.learn(inp.tree, drafting, shape, packed, tokens, top, bucket)
    return packed, top, tokens


def draft_step(
    adapter: ModelAdapter,
    cache: KVCache,
    inp: StepInputs,
    skip: SkipSet,
    program: SamplingProgram,
    sublayers: Sublayers | None = None,
    fns: StepFunctions = PLAIN_STEP_FUNCTIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One skip-mode forward of `inp.token` at `inp.pos`; advances both to the chain's next token.

    Returns (candidates (K,) best first, head (2,) float32 = [top-1 probability, top-1 token]).
    """
    visible = inp.cols <= inp.pos
    cache.prepare_slots(inp.pos, cache.capacity)
    logits = adapter.forward_static(inp.token, inp.pos, visible[None, :], inp.cols, cache, skip, sublayers=sublayers)
    return fns.draft_tail(logits, program, inp.sampling, inp.token, inp.pos, inp.cand.shape[1])


def score_step(
    adapter: ModelAdapter,
    cache: KVCache,
    inp: StepInputs,
    bucket: int,
    measure: bool = False,
    sublayers: Sublayers | None = None,
) -> torch.Tensor:
    """The search's scoring forward: any skip set (from `inp.keep`) over `bucket` queries; logits `(B, vocab)`.

    measure: also write each sublayer's residual and update sizes to `inp.sizes` (weighted by
    `inp.score_weights`), for the search's influence probe.
    """
    slots = inp.score_slots[:bucket]
    cache.prepare_slots(slots, cache.capacity)
    return adapter.forward_static(
        inp.score_ids[:bucket][None],
        inp.score_pos[:bucket],
        inp.score_allowed[:bucket],
        inp.score_keys,
        cache,
        NO_SKIP,
        keep=inp.keep != 0,
        sublayers=sublayers,
        sizes=(inp.score_weights[:bucket], inp.sizes) if measure else None,
    )
