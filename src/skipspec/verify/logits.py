"""Logits processing and the target model's choice at every tree node.

Terms used across skipspec:
- *target token* of a node: what the full model emits after that node's prefix. Greedy: the
  argmax. Sampling: one draw from the processed target distribution p (temperature, then top-k,
  then top-p, the order transformers applies them in).
- A drafted candidate is *accepted* when it equals the target token of its parent; the target
  token of the deepest accepted node is the *bonus* token.

Why one draw per node is the lossless rule: the drafter proposes deterministic candidates (the
top-k of its own distribution), so each candidate's proposal distribution is a point mass.
Recursive rejection with point masses accepts candidate x_i with probability
p_i(x_i) / 1 and on rejection continues with the residual norm(max(p_i - delta_{x_i}, 0)), which is
p with x_i removed and renormalised. Running that over siblings x_1..x_m and then drawing the
final token from the last residual outputs x with probability exactly p(x) - which is the same as
drawing y ~ p once and accepting the sibling equal to y (or emitting y as the bonus when no sibling
matches). The single draw needs no per-sibling loop and no host synchronisation, and it holds for
any tree: each node's draw is its own. Draws are keyed by position (`verify.sampling`), so the
same seed gives the same tokens whatever was drafted.
"""

from __future__ import annotations

import torch

from ..config import SamplingParams
from .sampling import inverse_cdf, keyed_uniform


def process_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Apply temperature, top-k and top-p to `(..., vocab)` float logits; removed tokens get -inf.

    Greedy (`do_sample=False`) returns the logits unchanged.
    """
    if not params.do_sample:
        return logits
    out = logits / params.temperature
    if params.top_k and params.top_k < out.shape[-1]:
        kth = out.topk(params.top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it
        # already does. The top token is always kept.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= params.top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def target_tokens(
    logits: torch.Tensor, params: SamplingParams, seed: torch.Tensor | None = None, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """The full model's choice at each row of `(N, vocab)` logits: argmax, or one draw each.

    Sampling draws row i by inverse CDF with the uniform keyed by (`seed`, `positions[i]`), the
    position in the sequence of the token being drawn (see `verify.sampling`): no generator state,
    no host round trip.
    """
    processed = process_logits(logits, params)
    if not params.do_sample:
        return processed.argmax(dim=-1)
    return inverse_cdf(processed.softmax(dim=-1), keyed_uniform(seed, positions))
