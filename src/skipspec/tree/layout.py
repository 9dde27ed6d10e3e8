"""Token trees as plain host data: parents, depths, ancestors; SWIFT's dynamic tree.

Node 0 is the root: the last committed token, whose KV is not yet in the cache. Every other node's
parent comes before it, so the slot a node occupies during verification is `committed + index`,
and a node's ancestors are known once its parent's are. Any shape is allowed: several branches at
any node, any depth. The device-side twin of this module, for fixed-shape steps, is
`tree.geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch


def width_for(top1_prob: float, schedule: Sequence[tuple[float, int]], default: int) -> int:
    """How many candidates of one depth enter SWIFT's tree, from that depth's top-1 probability.

    >>> width_for(0.97, ((0.95, 3), (0.8, 5), (0.5, 8)), 10)
    3
    >>> width_for(0.6, ((0.95, 3), (0.8, 5), (0.5, 8)), 10)
    8
    >>> width_for(0.1, ((0.95, 3), (0.8, 5), (0.5, 8)), 10)
    10
    """
    for threshold, width in schedule:
        if top1_prob > threshold:
            return width
    return default


@dataclass(frozen=True)
class TreeLayout:
    """Structure of one verification tree, root included (tokens live elsewhere).

    parents: parent node per node, -1 for the root; every parent comes before its children
    """

    parents: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.parents or self.parents[0] != -1:
            raise ValueError(f"node 0 must be the root (parent -1), got parents {self.parents}")
        for i, p in enumerate(self.parents[1:], start=1):
            if not 0 <= p < i:
                raise ValueError(f"node {i} has parent {p}: a parent must be an earlier node")

    @classmethod
    def under_root(cls, parents: Sequence[int]) -> TreeLayout:
        """The layout of drafted nodes whose `parents` count from the first drafted node (-1: the root).

        >>> TreeLayout.under_root([-1, 0, -1]).parents
        (-1, 0, 1, 0)
        """
        return cls((-1, *(int(p) + 1 for p in parents)))

    @property
    def size(self) -> int:
        return len(self.parents)

    @cached_property
    def depths(self) -> tuple[int, ...]:
        """Depth per node (root 0).

        >>> TreeLayout((-1, 0, 1, 0)).depths
        (0, 1, 2, 1)
        """
        depths = [0] * self.size
        for i, p in enumerate(self.parents[1:], start=1):
            depths[i] = depths[p] + 1
        return tuple(depths)

    def ancestors(self) -> torch.Tensor:
        """(N, N) bool: [i, j] is True where node j is node i or one of its ancestors.

        >>> TreeLayout((-1, 0, 0, 1)).ancestors().int().tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
        """
        return self._ancestors.clone()

    @cached_property
    def _ancestors(self) -> torch.Tensor:
        out = torch.eye(self.size, dtype=torch.bool)
        for i, p in enumerate(self.parents[1:], start=1):
            out[i] |= out[p]
        return out


@dataclass(frozen=True)
class SwiftTree:
    """SWIFT's dynamic tree: the draft's top-1 chain plus, at each depth, that depth's next-best
    candidates as leaf siblings of the chain node. Stored breadth first (depth by depth, chain
    node first), root included.

    widths: candidates per draft depth (depth 1 first)
    layout: the tree's parents
    ranks:  each node's rank among its depth's candidates (0: the chain)
    """

    widths: tuple[int, ...]
    layout: TreeLayout
    ranks: tuple[int, ...]

    def candidate_index(self, topk: int) -> torch.Tensor:
        """(N-1,) index of each drafted node into a flattened `(depth, topk)` candidate matrix.

        >>> build_tree((2, 1)).candidate_index(topk=4).tolist()
        [0, 1, 4]
        """
        depths = self.layout.depths
        return torch.tensor([(d - 1) * topk + r for d, r in zip(depths[1:], self.ranks[1:])], dtype=torch.long)


def build_tree(widths: Sequence[int]) -> SwiftTree:
    """Lay out SWIFT's tree for the given per-depth candidate counts.

    >>> t = build_tree((2, 1))
    >>> t.layout.parents, t.layout.depths, t.ranks
    ((-1, 0, 0, 1), (0, 1, 1, 2), (0, 0, 1, 0))
    """
    parents, ranks = [-1], [0]
    chain = 0
    for width in widths:
        if width < 1:
            raise ValueError(f"every drafted depth needs at least its chain node, got width {width}")
        first = len(parents)
        parents.extend([chain] * width)
        ranks.extend(range(width))
        chain = first
    return SwiftTree(tuple(int(w) for w in widths), TreeLayout(tuple(parents)), tuple(ranks))
