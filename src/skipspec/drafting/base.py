"""The drafter protocol: propose candidates per depth from the committed state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..model.skipset import SkipSet


@dataclass(frozen=True)
class Draft:
    """Candidates per depth.

    candidates: (D, K) token ids on the model's device, best first; row d is depth d+1, column 0
                the chain token that the next depth was drafted from.
    widths:     how many of each row's candidates enter the tree (SWIFT's confidence rule)
    top1_probs: the drafter's probability of each chain token (host floats)
    forwards:   forward passes spent
    """

    candidates: torch.Tensor
    widths: tuple[int, ...]
    top1_probs: tuple[float, ...]
    forwards: int

    @property
    def depth(self) -> int:
        return len(self.widths)


class Drafter(Protocol):
    def propose(self, root: torch.Tensor, committed: int, max_depth: int, skip: SkipSet) -> Draft:
        """Draft up to `max_depth` tokens after `root` (the last token, not yet in the cache)."""
        ...
