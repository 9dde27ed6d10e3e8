"""The verify step's reduction, shared by both executors: targets, acceptance, top-k."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..tree import TreeFrame
from .accept import accept_longest_path
from .logits import SamplingInputs, SamplingProgram, target_tokens


@dataclass(frozen=True)
class Verdict:
    """One verify step's result on the device (B = the tree's padded size).

    packed: (2B + 5,) long for the step's one read-back: `AcceptedPath.packed` (path length,
            bonus token, path nodes, path tokens), `TreeFrame.fault` (node, kind) and the tree's depth
    path:   (B,) the accepted path's node indices padded with B (for committing the cache)
    topk:   (B, k) the top-k token ids of the full model's logits at every node
    """

    packed: torch.Tensor
    path: torch.Tensor
    topk: torch.Tensor


def verify_tree(
    logits: torch.Tensor, frame: TreeFrame, program: SamplingProgram, values: SamplingInputs, topk: int
) -> Verdict:
    """The full model's logits `(B, vocab)` over a tree -> the accepted path and its bonus token.

    Each node's target is drawn at the position of the token after it (`positions + 1`).
    """
    targets = target_tokens(logits, program, values, frame.positions + 1)
    accepted = accept_longest_path(frame.tokens, frame.parents, frame.depths, frame.ancestors, targets)
    depth = torch.where(frame.tokens >= 0, frame.depths, 0).max().view(1)
    packed = torch.cat([accepted.packed, frame.fault, depth])
    return Verdict(packed, accepted.path, logits.topk(topk, dim=-1).indices)
