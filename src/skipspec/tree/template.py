"""Fixed draft-tree templates: the tree shape that maximizes the expected accepted length.

A template node is (parent node, rank): the drafter fills it with the rank-th guess for the token
that follows its parent's token (token recycling reads it from a successor table). Under the model
used here, the guess of rank r is the target with probability `rank_probs[r]`, independently at
every node, so a node is on the accepted path with the product of its path's probabilities, and a
tree's expected number of accepted drafted tokens is the sum of its nodes' values.

Every child is worth at most its parent, and (with non-increasing `rank_probs`) every sibling at
most its elder sibling. The `size` most valuable nodes therefore form a tree closed under both
relations, and taking nodes best first from a heap of frontier nodes finds it: the template is
optimal for every prefix of its node order at once, so one template of the largest size serves
every smaller budget by truncation.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError

# Acceptance of the full model's rank-r guess, roughly as token recycling sees it on chat text
# (the top-1 successor of a token is the target a bit more than half the time).
DEFAULT_RANK_PROBS: tuple[float, ...] = (0.6, 0.15, 0.07, 0.04, 0.025, 0.015, 0.01, 0.008)


@dataclass(frozen=True)
class TreeTemplate:
    """A tree shape in best-first order (so every node's parent comes before it).

    parents: (N,) -1 for a child of the root, else an earlier node
    ranks:   (N,) which guess of the parent's successors fills the node (0 = the best)
    depths:  (N,) 1 for a child of the root
    values:  (N,) the node's probability of being accepted under the rank model, non-increasing
    """

    parents: tuple[int, ...]
    ranks: tuple[int, ...]
    depths: tuple[int, ...]
    values: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.parents)

    def prefix(self, size: int) -> TreeTemplate:
        """The first `size` nodes: the best template of that size (see the module docstring).

        >>> build_template(4, (0.6, 0.3)).prefix(2).parents
        (-1, 0)
        """
        return TreeTemplate(self.parents[:size], self.ranks[:size], self.depths[:size], self.values[:size])

    @property
    def expected_accepted(self) -> float:
        """Expected drafted tokens accepted per step (the bonus token not counted)."""
        return math.fsum(self.values)


def check_rank_probs(rank_probs: Sequence[float]) -> tuple[float, ...]:
    """`rank_probs` as a tuple, or ConfigError: non-empty, each in (0, 1], non-increasing, sum <= 1.

    The sum bound holds because at most one guess can be the target; the order is what makes the
    best-first template optimal.

    >>> check_rank_probs([0.5, 0.2])
    (0.5, 0.2)
    >>> check_rank_probs([0.2, 0.5])
    Traceback (most recent call last):
    ...
    skipspec.errors.ConfigError: rank_probs must be non-increasing, got [0.2, 0.5]
    """
    try:
        probs = tuple(float(p) for p in rank_probs)
    except (TypeError, ValueError):
        raise ConfigError(f"rank_probs must be a sequence of probabilities, got {rank_probs!r}") from None
    if not probs:
        raise ConfigError("rank_probs must hold at least one probability")
    if not all(0.0 < p <= 1.0 for p in probs):
        raise ConfigError(f"rank_probs must each be in (0, 1], got {list(rank_probs)}")
    if any(b > a for a, b in zip(probs, probs[1:])):
        raise ConfigError(f"rank_probs must be non-increasing, got {list(rank_probs)}")
    if math.fsum(probs) > 1.0 + 1e-9:
        raise ConfigError(f"rank_probs must sum to at most 1 (one guess at most is right), got {list(rank_probs)}")
    return probs


def build_template(
    size: int,
    rank_probs: Sequence[float] = DEFAULT_RANK_PROBS,
    max_depth: int | None = None,
    max_children: int | None = None,
) -> TreeTemplate:
    """The `size`-node tree of largest expected accepted length, best node first.

    max_depth:    deepest node allowed (None: no bound but `size`)
    max_children: children per node (None: one per rank probability)

    >>> t = build_template(4, (0.6, 0.3))
    >>> t.parents, t.ranks, t.depths
    ((-1, 0, -1, 1), (0, 0, 1, 0), (1, 2, 1, 3))
    >>> round(t.expected_accepted, 3)
    1.476
    >>> build_template(3, (0.6, 0.3), max_depth=1).parents
    (-1, -1)
    """
    probs = check_rank_probs(rank_probs)
    if not (isinstance(size, int) and size >= 0):
        raise ConfigError(f"template size must be an integer >= 0, got {size!r}")
    if max_depth is not None and not (isinstance(max_depth, int) and max_depth >= 0):
        raise ConfigError(f"template max_depth must be an integer >= 0 or None, got {max_depth!r}")
    if max_children is not None and not (isinstance(max_children, int) and max_children >= 1):
        raise ConfigError(f"template max_children must be an integer >= 1 or None, got {max_children!r}")
    width = len(probs) if max_children is None else min(max_children, len(probs))
    depth_cap = size if max_depth is None else min(max_depth, size)

    parents: list[int] = []
    ranks: list[int] = []
    depths: list[int] = []
    values: list[float] = []
    # Frontier entries: (-value, tie, parent, rank, depth). Each taken node offers two successors,
    # its first child and its next sibling, so the heap never holds more than size + 1 entries.
    # The tie counter makes equal values come out in the order they were offered (deterministic).
    tie = 0
    heap = [(-probs[0], tie, -1, 0, 1)] if depth_cap >= 1 else []
    while heap and len(parents) < size:
        neg, _, parent, rank, depth = heapq.heappop(heap)
        node = len(parents)
        parents.append(parent)
        ranks.append(rank)
        depths.append(depth)
        values.append(-neg)
        if depth < depth_cap:
            tie += 1
            heapq.heappush(heap, (neg * probs[0], tie, node, 0, depth + 1))
        if rank + 1 < width:
            tie += 1
            # The parent's value times the next rank's probability (divide out this rank's).
            heapq.heappush(heap, (neg / probs[rank] * probs[rank + 1], tie, parent, rank + 1, depth))
    return TreeTemplate(tuple(parents), tuple(ranks), tuple(depths), tuple(values))
