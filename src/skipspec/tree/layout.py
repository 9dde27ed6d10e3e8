"""SWIFT's dynamic draft tree, as plain data.

The tree is the draft's top-1 chain plus, at each depth, the next-best candidates of that depth as
leaf siblings of the chain node. Node 0 is the root: the last committed token, whose KV is not yet
in the cache. Nodes are stored breadth first (depth by depth, chain node first), so the slot a node
occupies during verification is `committed + index`, and every node's ancestors come before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch


def width_for(top1_prob: float, schedule: Sequence[tuple[float, int]], default: int) -> int:
    """How many candidates of one depth enter the tree, from that depth's top-1 probability.

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
    """Structure of one verification tree (tokens live elsewhere; see `gather_index`).

    widths:  candidates per draft depth (depth 1 first)
    parents: parent node per node, -1 for the root
    depths:  depth per node (root 0)
    ranks:   the node's rank among its depth's draft candidates (0 = the chain)
    """

    widths: tuple[int, ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    ranks: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return len(self.widths)

    def ancestors(self) -> torch.Tensor:
        """(N, N) bool: [i, j] is True where node j is node i or one of its ancestors.

        >>> build_tree((2, 1)).ancestors().int().tolist()
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
        """
        return self._ancestors.clone()

    @cached_property
    def _ancestors(self) -> torch.Tensor:
        # Only chain nodes (rank 0) have children, so a node's strict ancestors are exactly the
        # chain nodes shallower than it (the root is the rank-0 node of depth 0).
        depths = torch.tensor(self.depths)
        chain = torch.tensor(self.ranks) == 0
        strict = chain[None, :] & (depths[None, :] < depths[:, None])
        return strict | torch.eye(self.size, dtype=torch.bool)

    def candidate_index(self, topk: int) -> torch.Tensor:
        """(N-1,) index of each non-root node into a flattened `(depth, topk)` candidate matrix.

        >>> build_tree((2, 1)).candidate_index(topk=4).tolist()
        [0, 1, 4]
        """
        return torch.tensor([(d - 1) * topk + r for d, r in zip(self.depths[1:], self.ranks[1:])], dtype=torch.long)


def build_tree(widths: Sequence[int]) -> TreeLayout:
    """Lay out the tree for the given per-depth candidate counts.

    >>> t = build_tree((2, 1))
    >>> t.parents, t.depths, t.ranks
    ((-1, 0, 0, 1), (0, 1, 1, 2), (0, 0, 1, 0))
    """
    parents, depths, ranks = [-1], [0], [0]
    chain = 0
    for depth, width in enumerate(widths, start=1):
        if width < 1:
            raise ValueError(f"every drafted depth needs at least its chain node, got width {width}")
        first = len(parents)
        for rank in range(width):
            parents.append(chain)
            depths.append(depth)
            ranks.append(rank)
        chain = first
    return TreeLayout(tuple(int(w) for w in widths), tuple(parents), tuple(depths), tuple(ranks))
