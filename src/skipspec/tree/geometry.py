"""Tree geometry on the device, for any shape, with no host sync and fixed shapes.

The verify step of both executors builds its frame here: from the nodes' parents (padded to a
bucket) it derives every node's ancestors and depth, and from those the attention mask and the
positions. A captured step therefore verifies a tree of any new shape with no new capture: the
shape lives in the step's input buffer, not in the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def doublings(size: int) -> int:
    """Pointer-doubling rounds that reach every ancestor in a tree of `size` nodes.

    >>> [doublings(n) for n in (1, 2, 3, 4, 5, 256)]
    [0, 1, 2, 2, 3, 8]
    """
    return math.ceil(math.log2(size)) if size > 1 else 0


def tree_ancestors(parents: torch.Tensor, rounds: int) -> torch.Tensor:
    """(B, B) bool, [i, j] True where node j is node i or one of its ancestors.

    parents: (B,) long, -1 for the root, else an earlier node. `rounds` >= `doublings(B)`; extra
    rounds change nothing, so a compiled copy can use one count for every bucket.

    Pointer doubling: after round r each row holds the ancestors within 2**r links, and `up`
    points 2**r links up (the root points at itself), so log2(B) gathers replace a walk per node.

    >>> tree_ancestors(torch.tensor([-1, 0, 0, 1]), 2).int().tolist()
    [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    """
    index = torch.arange(parents.shape[0], device=parents.device)
    up = torch.where(parents >= 0, parents, index)
    ancestors = (index[:, None] == index[None, :]) | (up[:, None] == index[None, :])
    for _ in range(rounds):
        ancestors = ancestors | ancestors.index_select(0, up)
        up = up.index_select(0, up)
    return ancestors


@dataclass(frozen=True)
class TreeFrame:
    """A verify step's frame over a tree padded to B nodes and C visible cache slots.

    tokens:    (B,) node tokens, -1 on padding and on rejected nodes (never accepted)
    parents:   (B,) -1 for the root; padding hangs under the root
    depths:    (B,) root 0
    ancestors: (B, B) bool
    positions: (B,) rotary positions, committed + depth
    allowed:   (B, C) bool: the committed prefix and the node's ancestors (self included)
    key_positions: (C,) the position each visible slot holds
    fault:     (2,) long: [the first malformed node (-1: none), 1 bad parent / 2 bad token]
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    ancestors: torch.Tensor
    positions: torch.Tensor
    allowed: torch.Tensor
    key_positions: torch.Tensor
    fault: torch.Tensor


def tree_frame(
    committed,
    n,
    tokens: torch.Tensor,
    parents: torch.Tensor,
    cols: torch.Tensor,
    vocab_size: int,
    rounds: int,
    holes: bool = False,
) -> TreeFrame:
    """The frame of a tree whose first `n` of `B` rows are real (node 0: the root).

    committed, n: ints or 0-d/1-element device tensors (a captured step reads them from its input
    buffer); tokens, parents: (B,) as the drafters gave them, unchecked; cols: (C,) 0..C-1.
    Malformed rows are reported in `fault` and neutralised (a bad parent hangs the node under the
    root, a bad token never matches), so the forward stays in bounds whatever a drafter proposed.
    holes: a token of -1 marks a node left out of a fixed layout (`runtime.device_drafting`), not
    a fault; it is never accepted, like padding.
    """
    b = tokens.shape[0]
    index = cols[:b]
    real = index < n
    parent_ok = (parents >= 0) & (parents < index) | (index == 0)
    token_ok = (tokens >= 0) & (tokens < vocab_size)
    token_fine = (token_ok | (tokens == -1)) if holes else token_ok
    bad = real & ~(parent_ok & token_fine)
    kind = torch.where(parent_ok, 2, 1)
    first = torch.where(bad, index, b).min().view(1)
    fault = torch.cat([torch.where(first < b, first, -1), kind.index_select(0, first.clamp(max=b - 1))])
    parents = torch.where(index == 0, -1, torch.where(real & parent_ok, parents, 0))
    tokens = torch.where(real & token_ok, tokens, -1)
    ancestors = tree_ancestors(parents, rounds)
    depths = ancestors.sum(dim=1) - 1
    rel = cols - committed  # column c holds tree node c - committed, if any
    in_tree = (rel >= 0) & (rel < b)
    node = rel.clamp(0, b - 1)
    prefix = cols < committed
    allowed = prefix[None, :] | (in_tree[None, :] & ancestors[:, node])
    key_positions = torch.where(prefix, cols, committed + depths[node])
    return TreeFrame(
        tokens=tokens,
        parents=parents,
        depths=depths,
        ancestors=ancestors,
        positions=committed + depths,
        allowed=allowed,
        key_positions=key_positions,
        fault=fault,
    )
