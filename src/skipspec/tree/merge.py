"""Merge several drafters' trees into the one tree a step verifies.

Two nodes whose whole token path from the root is the same are the same guess, so they become one
merged node (a trie insert): a branch proposed by both the n-gram matcher and token recycling costs
one slot, and is credited to both. Trees whose tokens or parents live on an accelerator cannot be
compared without a host sync; they are appended side by side after the host nodes, unmerged.

The budget rule: merged nodes are taken in a priority order, and a node that is new when the tree
is full is dropped together with its subtree. The order is each source's nodes in the order the
source gave them (drafters list their best nodes first), sources one after another in the order
given (`interleave=False`), or one node of each source in turn (`interleave=True`). A node that
merges into an existing one costs nothing, so it is kept even when the tree is full. Since every
node's parent comes before it in its source, every kept node's parent is kept.

Sibling order is deterministic: the order in which the priority order first reached them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..errors import DrafterError

TokenIds = Sequence[int] | torch.Tensor


class TreeLike(Protocol):
    """What `merge_trees` reads from a source's tree (`skipspec.drafting.DraftTree` is one)."""

    tokens: TokenIds
    parents: TokenIds


@dataclass(frozen=True)
class MergedTree:
    """The verified tree, and where each of its nodes came from.

    tokens:  (N,) a list of ints, or a device tensor when a source's tree lives on the device
    parents: (N,) -1 for a child of the root, else an earlier node; a list of ints, or a device
             tensor when a device source's parents are one
    origins: per merged node, the (source index, node index in that source's tree) pairs it stands
             for, source order; one pair per node of a device source
    sizes:   per source, how many of its nodes the merged tree holds (the rest did not fit)
    source_parents: per source, its tree's parents where they were on the host (None where they
             live on the device), to map accepted paths back (`split_path`)
    """

    tokens: TokenIds
    parents: TokenIds
    origins: tuple[tuple[tuple[int, int], ...], ...]
    sizes: tuple[int, ...]
    source_parents: tuple[tuple[int, ...] | None, ...]

    def __len__(self) -> int:
        return len(self.origins)


def _on_host(values: TokenIds) -> bool:
    return not isinstance(values, torch.Tensor) or values.device.type == "cpu"


def _host_list(values: TokenIds) -> list[int]:
    return values.tolist() if isinstance(values, torch.Tensor) else list(values)


def _length(values: TokenIds) -> int:
    return int(values.shape[0]) if isinstance(values, torch.Tensor) else len(values)


def _device_of(tree: TreeLike) -> torch.device:
    on_host = _on_host(tree.tokens)
    return tree.parents.device if on_host else tree.tokens.device


def check_parents(name: str, parents: Sequence[int]) -> None:
    """DrafterError naming drafter `name` unless every node's parent is -1 (the root) or an
    earlier node: what makes a list of parents a tree in which parents come first."""
    for i, p in enumerate(parents):
        if not -1 <= p < i:
            raise DrafterError(
                f"drafter {name!r}: node {i} has parent {p}; a parent must be -1 (the root) or an earlier node"
            )


def _priority(lengths: Sequence[int], interleave: bool) -> list[tuple[int, int]]:
    """(source, node) pairs in merge priority order."""
    if not interleave:
        return [(s, i) for s, n in enumerate(lengths) for i in range(n)]
    return [(s, i) for i in range(max(lengths, default=0)) for s, n in enumerate(lengths) if i < n]


def merge_trees(
    trees: Sequence[tuple[str, TreeLike | None]], max_nodes: int, *, interleave: bool = False, checked: bool = False
) -> MergedTree:
    """One tree under the root holding every source's nodes that fit in `max_nodes`.

    trees: (drafter name, its tree or None) per source; a source's index is its place here.
    checked: the caller has checked every host tree's parents (`engine.assemble` does): not again.

    >>> from skipspec.drafting.base import DraftTree as T
    >>> m = merge_trees([("ngram", T([5, 6, 7], [-1, 0, 1])), ("recycle", T([5, 8, 6], [-1, 0, 0]))], 8)
    >>> m.tokens, m.parents
    ([5, 6, 7, 8], [-1, 0, 1, 0])
    >>> m.origins[0], m.origins[1], m.origins[3]
    (((0, 0), (1, 0)), ((0, 1), (1, 2)), ((1, 1),))
    >>> merge_trees([("a", T([5, 6, 7], [-1, 0, 1])), ("b", T([9], [-1]))], 3, interleave=True).tokens
    [5, 9, 6]
    """
    if not (isinstance(max_nodes, int) and max_nodes >= 0):
        raise DrafterError(f"max_nodes must be an integer >= 0, got {max_nodes!r}")
    host: list[tuple[list[int], list[int]] | None] = []
    lengths: list[int] = []
    source_parents: list[tuple[int, ...] | None] = []
    for name, tree in trees:
        if tree is None:
            host.append(([], []))
            lengths.append(0)
            source_parents.append(())
            continue
        n = _length(tree.tokens)
        if _length(tree.parents) != n:
            raise DrafterError(f"drafter {name!r}: {n} tokens but {_length(tree.parents)} parents")
        parents = _host_list(tree.parents) if _on_host(tree.parents) else None
        if parents is not None and not checked:
            check_parents(name, parents)
        host.append((_host_list(tree.tokens), parents) if parents is not None and _on_host(tree.tokens) else None)
        lengths.append(n)
        source_parents.append(None if parents is None else tuple(parents))

    tokens: list[int] = []
    merged_parents: list[int] = []
    origins: list[list[tuple[int, int]]] = []
    trie: dict[tuple[int, int], int] = {}  # (merged parent, token) -> merged node
    where = [[-1] * n for n in lengths]  # source node -> merged node, -1 when dropped
    sizes = [0] * len(lengths)
    room = max_nodes
    for s, i in _priority(lengths, interleave):
        source = host[s]
        if source is None:
            # Unread device nodes: each costs a slot; the kept ones are a prefix of their source.
            if room > 0 and sizes[s] == i:
                sizes[s] += 1
                room -= 1
            continue
        src_tokens, src_parents = source
        p = src_parents[i]
        if p < 0:
            parent = -1
        else:
            parent = where[s][p]
            if parent < 0:  # dropped with its parent
                continue
        key = (parent, src_tokens[i])
        node = trie.get(key)
        if node is None:
            if room == 0:
                continue
            room -= 1
            node = trie[key] = len(tokens)
            tokens.append(src_tokens[i])
            merged_parents.append(parent)
            origins.append([])
        origins[node].append((s, i))
        where[s][i] = node
        sizes[s] += 1

    # In turn, a node's origins were met out of source order: sort them.
    all_origins = [tuple(sorted(o)) if interleave else tuple(o) for o in origins]
    device_kept = [0 if host[s] is not None else n for s, n in enumerate(sizes)]
    if not any(device_kept):
        return MergedTree(tokens, merged_parents, tuple(all_origins), tuple(sizes), tuple(source_parents))
    return _append_device(trees, device_kept, tokens, merged_parents, all_origins, sizes, source_parents)


def _append_device(trees, device_kept, tokens, parents, origins, sizes, source_parents) -> MergedTree:
    """The host nodes, then each device source's kept prefix, as one tree (no host sync)."""
    device = next(_device_of(tree) for (_, tree), n in zip(trees, device_kept) if n)
    token_parts = [torch.tensor(tokens, dtype=torch.long, device=device)]
    parent_parts: list[torch.Tensor | list[int]] = [list(parents)]
    offset = len(tokens)
    for s, n in enumerate(device_kept):
        if not n:
            continue
        tree = trees[s][1]
        src_tokens = tree.tokens[:n] if isinstance(tree.tokens, torch.Tensor) else torch.tensor(list(tree.tokens[:n]))
        token_parts.append(src_tokens.to(device=device, dtype=torch.long))
        if source_parents[s] is not None:
            parent_parts.append([p if p < 0 else p + offset for p in source_parents[s][:n]])
        else:
            src = tree.parents[:n].to(torch.long)
            parent_parts.append(torch.where(src < 0, src, src + offset))
        origins.extend(((s, i),) for i in range(n))
        offset += n
    if all(isinstance(p, list) for p in parent_parts):
        merged_parents: TokenIds = [p for part in parent_parts for p in part]
    else:
        pdevice = next(p.device for p in parent_parts if isinstance(p, torch.Tensor))
        merged_parents = torch.cat(
            [p if isinstance(p, torch.Tensor) else torch.tensor(p, dtype=torch.long, device=pdevice) for p in parent_parts]
        )
    return MergedTree(torch.cat(token_parts), merged_parents, tuple(origins), tuple(sizes), tuple(source_parents))


def split_path(merged: MergedTree, path: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Per source, its own node indices on an accepted merged path (shallowest first).

    path: merged node indices from a child of the root down. A source's path is as deep as the
    deepest path node it proposed; where it proposed the same token path twice (duplicate
    siblings), the first such node is credited, with its own ancestors.

    >>> from skipspec.drafting.base import DraftTree as T
    >>> m = merge_trees([("a", T([5, 6, 7], [-1, 0, 1])), ("b", T([5, 8], [-1, 0]))], 8)
    >>> split_path(m, [0, 1, 2]), split_path(m, [0, 3])
    (((0, 1, 2), (0,)), ((0,), (0, 1)))
    """
    out = []
    for s, parents in enumerate(merged.source_parents):
        mine = [next((i for t, i in merged.origins[m] if t == s), None) for m in path]
        depth = max((d for d, i in enumerate(mine) if i is not None), default=-1)
        if depth < 0:
            out.append(())
        elif parents is None:
            # A device source is never merged: its nodes on the path form the path's prefix.
            out.append(tuple(mine[: depth + 1]))
        else:
            chain, node = [], mine[depth]
            while node >= 0:
                chain.append(node)
                node = parents[node]
            out.append(tuple(reversed(chain)))
    return tuple(out)
