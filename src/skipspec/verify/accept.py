"""Acceptance of the longest correct root-to-node path in a verification tree of any shape."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AcceptedPath:
    """Device tensors; `packed` is meant for one host transfer.

    packed: (2N + 2,) long = [path length L (root included), bonus token, path node indices
            padded with N (ascending, so ancestors first), the path nodes' tokens (same padding
            positions hold the last node's token)].
    path:   (N,) the padded path node indices, on the device (for committing the cache)
    """

    packed: torch.Tensor
    path: torch.Tensor


def accept_longest_path(
    tokens: torch.Tensor, parents: torch.Tensor, depths: torch.Tensor, ancestors: torch.Tensor, targets: torch.Tensor
) -> AcceptedPath:
    """Find the deepest node whose every ancestor (and itself) equals its parent's target token.

    tokens (N,) node tokens (root first); parents (N,) with -1 for the root and every parent
    before its children; depths (N,); ancestors (N, N) bool (`tree.tree_ancestors`); targets (N,)
    the full model's choice at each node. Of equally deep such nodes the first is taken.

    Duplicate siblings (one token proposed twice under one parent, as two sources' trees drafted
    on the device are not merged) are each followed: the deepest path wins, through whichever
    copy. That is exact, for greedy and sampled targets alike: a node's target depends only on
    the tokens before it (and, sampling, on the seed and its position: `verify.sampling`), so both
    copies' subtrees are checked against the same targets, and every path accepted is a prefix of
    the one sequence plain decoding emits.

    >>> import torch
    >>> from skipspec.tree import TreeLayout
    >>> t = TreeLayout((-1, 0, 0, 1))               # root, a, a', b (b child of a)
    >>> toks = torch.tensor([7, 1, 2, 3])
    >>> targets = torch.tensor([1, 3, 9, 5])        # root->1 (a ok), a->3 (b ok), b->5 bonus
    >>> p = accept_longest_path(toks, torch.tensor(t.parents), torch.tensor(t.depths), t.ancestors(), targets)
    >>> p.packed.tolist()
    [3, 5, 0, 1, 3, 4, 7, 1, 3, 3]
    """
    n = tokens.shape[0]
    correct = tokens == targets[parents.clamp(min=0)]
    correct[:1] = True  # a slice fill: no scalar copied to the device
    index = torch.arange(n, device=tokens.device)
    ok = ~(ancestors & ~correct[None, :]).any(dim=1)
    # Index with one-element tensors, never a 0-d one: `x[t]` with a 0-d device tensor reads it
    # back to the host (a hidden sync, and an error inside a CUDA graph capture).
    deepest = torch.where(ok, depths, -1).argmax().view(1)
    on_path = ancestors.index_select(0, deepest)[0]
    path = torch.where(on_path, index, n).sort().values
    head = torch.cat([on_path.sum().view(1), targets.index_select(0, deepest)])
    path_tokens = tokens[path.clamp(max=n - 1)]
    return AcceptedPath(torch.cat([head, path, path_tokens]), path)
