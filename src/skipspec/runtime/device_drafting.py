"""Drafting inside the captured step: prompt lookup and token recycling on the device.

On a GPU a small model's verify step takes about a millisecond, and drafting on the host between
two steps (the n-gram index, the recycling table, merging, staging the tree) costs half as much
again, with the GPU idle all that while. Both drafters are fixed-shape programs over small
tensors, so a *drafting step* (`runtime.steps.drafting_step`) drafts its tree on the device from
the state the last step left, verifies it, and learns from the result. The next step can then be
launched before the host has read this one: the host reads tokens back one step behind, and its
own work overlaps the GPU's.

The tree has a fixed layout (`DeviceTreeShape`), drafted nodes after the root:
- `chains` x `chain_depth` nodes of prompt lookup: the continuations of the context's earlier
  occurrences of its own suffix, longest match first, then the most recent (the order of
  `drafting.ngram.scan_matches`). Chains that repeat an earlier chain's prefix share its nodes,
  as in a trie: the repeated node is a hole and what follows hangs under the earlier chain.
- the nodes of a recycling template (`tree.template`), grown from the root through the
  successor table that every step refreshes with its own top-k (`drafting.recycle`).
A hole (no match, an unknown successor, a shared prefix) carries token -1: it is never accepted
and not a fault (the frame is built with `holes=True`), and its descendants are holes too.

These are pure tensor functions with no host sync, tested against the host drafters they mirror;
the functions that update state write into the persistent buffers of `DraftingInputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..tree.template import TreeTemplate

HOLE = -1


@dataclass(frozen=True)
class DeviceTreeShape:
    """The layout of a drafting step's tree (host constants; a captured graph per shape).

    min_ngram, max_ngram: the suffix lengths prompt lookup matches (as `drafting.NgramConfig`)
    chains, chain_depth:  continuations drafted, and tokens along each (0 chains: no lookup)
    template_parents, template_ranks: the recycling template (`TreeTemplate`'s; empty: no recycling)
    k: successors per token in the table (`drafting.RecycleConfig.k`)
    """

    min_ngram: int = 2
    max_ngram: int = 4
    chains: int = 0
    chain_depth: int = 0
    template_parents: tuple[int, ...] = ()
    template_ranks: tuple[int, ...] = ()
    k: int = 8

    def __post_init__(self) -> None:
        for name in ("min_ngram", "max_ngram", "k"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"DeviceTreeShape.{name} must be an integer >= 1, got {value!r}")
        for name in ("chains", "chain_depth"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise ConfigError(f"DeviceTreeShape.{name} must be an integer >= 0, got {value!r}")
        if self.max_ngram < self.min_ngram:
            raise ConfigError(f"DeviceTreeShape.max_ngram ({self.max_ngram}) is below min_ngram ({self.min_ngram})")
        if len(self.template_parents) != len(self.template_ranks):
            raise ConfigError("DeviceTreeShape: template_parents and template_ranks differ in length")
        for i, (p, r) in enumerate(zip(self.template_parents, self.template_ranks)):
            if not (-1 <= p < i and 0 <= r < self.k):
                raise ConfigError(f"DeviceTreeShape: template node {i} has parent {p} and rank {r}")
        if self.size == 0:
            raise ConfigError("DeviceTreeShape drafts nothing: give it chains or a template")

    @classmethod
    def of(cls, template: TreeTemplate | None, k: int, chains: int = 0, chain_depth: int = 0,
           min_ngram: int = 2, max_ngram: int = 4) -> DeviceTreeShape:  # fmt: skip
        parents, ranks = (template.parents, template.ranks) if template is not None else ((), ())
        return cls(min_ngram, max_ngram, chains, chain_depth, tuple(parents), tuple(ranks), k)

    @property
    def lookup_nodes(self) -> int:
        return self.chains * self.chain_depth

    @property
    def size(self) -> int:
        """Drafted nodes (the root not counted)."""
        return self.lookup_nodes + len(self.template_parents)

    @property
    def depth(self) -> int:
        """The deepest node: a step commits at most this many drafted tokens, and the bonus token."""
        return max(self.chain_depth if self.chains else 0, *template_depths(self.template_parents), 0)


def template_depths(parents: tuple[int, ...]) -> list[int]:
    """Depth of each template node (1 under the root).

    >>> template_depths((-1, 0, -1, 1))
    [1, 2, 1, 3]
    """
    depths: list[int] = []
    for p in parents:
        depths.append(1 if p < 0 else depths[p] + 1)
    return depths


def template_paths(parents: tuple[int, ...], ranks: tuple[int, ...]) -> list[list[int]]:
    """Per template node, the ranks along its path from the root, padded with -1 to the deepest.

    >>> template_paths((-1, 0, -1, 1), (0, 0, 1, 2))
    [[0, -1, -1], [0, 0, -1], [1, -1, -1], [0, 0, 2]]
    """
    paths: list[list[int]] = []
    for p, r in zip(parents, ranks):
        paths.append((paths[p] if p >= 0 else []) + [r])
    deepest = max((len(path) for path in paths), default=0)
    return [path + [-1] * (deepest - len(path)) for path in paths]


def template_accepted(shape: DeviceTreeShape, tree_tokens: Sequence[int], accepted: Sequence[int]) -> int:
    """Drafted tokens a step of `shape`'s template alone would have accepted, from a step of
    `shape` that accepted `accepted` (drafted tokens, the bonus excluded) over a tree of
    `tree_tokens` (root first).

    A node's target depends only on its prefix (sampling: and on the seed and position), so the
    template alone accepts its longest path that spells a prefix of `accepted`: the whole tree
    holds that path, and the deepest accepted path wins.

    >>> shape = DeviceTreeShape(chains=1, chain_depth=2, template_parents=(-1, 0, -1), template_ranks=(0, 0, 1))
    >>> template_accepted(shape, [0, 5, 6, 5, 7, 8], [5, 6]), template_accepted(shape, [0, 5, 6, 5, 7, 8], [5, 7])
    (1, 2)
    """
    start, best = 1 + shape.lookup_nodes, 0
    depth: list[int] = []  # per template node: its depth if its path spells a prefix of `accepted`, else 0
    for i, parent in enumerate(shape.template_parents):
        d = 1 if parent < 0 else depth[parent] + 1 if depth[parent] else 0
        ok = 0 < d <= len(accepted) and tree_tokens[start + i] == accepted[d - 1]
        depth.append(d if ok else 0)
        best = max(best, depth[-1])
    return best


@dataclass(frozen=True)
class DraftingInputs:
    """The device buffers drafting steps of one shape read and write (H >= C + B).

    history: (H,) token ids by position: the prompt, the output, and the root at the committed
             length (shared by every shape)
    table:   (V + 1, k) the successor table; row V takes writes that must go nowhere; HOLE =
             unknown (shared by every shape)
    paths:   (T, D) `template_paths` of the shape's template (an empty template: one hole)
    parents: (B - 1,) the drafted nodes' parents in the step's numbering (root 0): the template
             part fixed, the lookup part rewritten by each step
    """

    history: torch.Tensor
    table: torch.Tensor
    paths: torch.Tensor
    parents: torch.Tensor

    @classmethod
    def of(cls, shape: DeviceTreeShape, history: torch.Tensor, table: torch.Tensor, bucket: int) -> DraftingInputs:
        device = history.device
        paths = template_paths(shape.template_parents, shape.template_ranks) or [[-1]]
        parents = [0] * (bucket - 1)
        for i, p in enumerate(shape.template_parents):
            parents[shape.lookup_nodes + i] = 0 if p < 0 else shape.lookup_nodes + 1 + p
        return cls(
            history,
            table,
            torch.tensor(paths, dtype=torch.long, device=device),
            torch.tensor(parents, dtype=torch.long, device=device),
        )


def lookup_chains(history: torch.Tensor, length: torch.Tensor, shape: DeviceTreeShape) -> torch.Tensor:
    """(chains, chain_depth) continuations of the context's suffix (`drafting.ngram`'s matches).

    history: (H,) tokens, the first `length` (a 1-element tensor) real. An earlier end position
    matches with the longest n <= max_ngram for which the n tokens ending there equal the
    context's last n; matches of n >= min_ngram are ranked longest first, then most recent, and
    the tokens after the best `chains` of them (up to the context's end) are their chains.

    >>> h = torch.tensor([1, 2, 3, 9, 2, 3, 7, 1, 2, 3, 0, 0])
    >>> lookup_chains(h, torch.tensor([10]), DeviceTreeShape(1, 3, chains=3, chain_depth=3)).tolist()
    [[9, 2, 3], [7, 1, 2], [-1, -1, -1]]
    """
    size = history.shape[0]
    index = torch.arange(size, device=history.device)
    last = length - 1
    run = index < last  # ends before the context's last token
    matched = torch.zeros_like(index)
    for i in range(shape.max_ngram):
        here = history.index_select(0, (index - i).clamp(min=0))
        there = history.index_select(0, (last - i).clamp(min=0))
        run = run & (index >= i) & (here == there)
        matched = matched + run
    score = torch.where(matched >= shape.min_ngram, matched * size + index, -1)
    # The best few by repeated argmax: each a reduction that fuses with the scan above, where a
    # top-k over the whole history is a sort of several kernels (most of the lookup's time).
    ends, found = [], []
    for _ in range(shape.chains):
        end = score.argmax(dim=0, keepdim=True)
        ends.append(end)
        found.append(score.gather(0, end) >= 0)
        score = torch.where(index == end, -1, score)
    positions = torch.cat(ends)[:, None] + 1 + torch.arange(shape.chain_depth, device=history.device)[None, :]
    tokens = history.index_select(0, positions.clamp(max=size - 1).flatten()).view(positions.shape)
    known = torch.cat(found)[:, None] & (positions <= last)
    return torch.where(known, tokens, HOLE)


def chain_trie(chains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chains (M, L) as trie nodes, chain-major: (tokens (M*L,), parents (M*L,), -1 = the root).

    A node whose chain repeats an earlier chain's tokens up to and including it is a hole; its
    chain's next node hangs under the earlier chain's.

    >>> tokens, parents = chain_trie(torch.tensor([[5, 6, 7], [5, 6, 8], [9, -1, -1]]))
    >>> tokens.tolist(), parents.tolist()
    ([5, 6, 7, -1, -1, 8, 9, -1, -1], [-1, 0, 1, -1, 0, 1, -1, 6, 7])
    """
    m, length = chains.shape
    same = (chains[:, None, :] == chains[None, :, :]).long().cumprod(dim=2)  # [i, j, d]: prefixes equal to d
    canon = same.argmax(dim=0)  # [j, d]: the first chain with j's prefix (argmax takes the first maximum)
    chain = torch.arange(m, device=chains.device)[:, None]
    depth = torch.arange(length, device=chains.device)[None, :]
    tokens = torch.where(canon == chain, chains, HOLE)
    parents = torch.cat([torch.full((m, 1), -1, device=chains.device), canon[:, :-1] * length + depth[:, :-1]], dim=1)
    return tokens.flatten(), parents.flatten()


def grow_template(table: torch.Tensor, root: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """(T,) the tokens of the template grown from `root` (1,) through `table` (`drafting.recycle.expand`
    with holes kept in place of dropped nodes).

    >>> table = torch.full((11, 2), -1); table[1] = torch.tensor([2, 3]); table[2, 0] = 4
    >>> paths = torch.tensor(template_paths((-1, 0, -1, 1, 0), (0, 0, 1, 0, 1)))
    >>> grow_template(table, torch.tensor([1]), paths).tolist()
    [2, 4, 3, -1, -1]
    """
    k = table.shape[1]
    flat = table.view(-1)
    head = root.expand(paths.shape[0])
    for level in range(paths.shape[1]):
        rank = paths[:, level]
        successor = flat.index_select(0, head.clamp(min=0) * k + rank.clamp(min=0))
        head = torch.where(rank < 0, head, torch.where(head >= 0, successor, HOLE))
    return head


def record_successors(table: torch.Tensor, tokens: torch.Tensor, topk: torch.Tensor) -> None:
    """Row tokens[i] := topk[i]: `drafting.recycle.record_topk` on the device.

    A token at several nodes keeps its first node's guesses; holes and ids outside the table
    write to the spare last row; top-k ids past the vocabulary become HOLE.

    >>> table = torch.full((7, 2), -1)
    >>> record_successors(table, torch.tensor([3, 1, 3, -1]), torch.tensor([[1, 2], [4, 9], [5, 0], [2, 2]]))
    >>> table[3].tolist(), table[1].tolist()
    ([1, 2], [4, -1])
    """
    vocab, k = table.shape[0] - 1, table.shape[1]
    index = torch.arange(tokens.shape[0], device=tokens.device)
    repeated = ((tokens[None, :] == tokens[:, None]) & (index[None, :] < index[:, None])).any(dim=1)
    rows = torch.where((tokens >= 0) & (tokens < vocab) & ~repeated, tokens, vocab)
    succ = topk[:, :k]
    if succ.shape[1] < k:
        succ = torch.nn.functional.pad(succ, (0, k - succ.shape[1]), value=HOLE)
    table.index_copy_(0, rows, torch.where(succ < vocab, succ, HOLE))


def draft_tree(
    tree: torch.Tensor, root: torch.Tensor, drafting: DraftingInputs, shape: DeviceTreeShape, bucket: int
) -> None:
    """Write the next tree's node count, tokens and parents into the verify step's packed input
    `tree` (`runtime.buckets.pack_tree`'s layout; its committed length is left as it is), so that
    steps of layouts of different buckets can follow each other."""
    parts, parents = [], drafting.parents
    if shape.chains:
        chains = lookup_chains(drafting.history, tree[0:1] + 1, shape)
        tokens, chain_parents = chain_trie(chains)
        parts.append(tokens)
        parents = torch.cat([chain_parents + 1, drafting.parents[shape.lookup_nodes :]])
    if shape.template_parents:
        parts.append(grow_template(drafting.table, root, drafting.paths))
    pad = bucket - 1 - shape.size
    if pad:
        parts.append(torch.full((pad,), HOLE, dtype=torch.long, device=tree.device))
    tree[1:2].fill_(bucket)
    tree[3 : 2 + bucket].copy_(torch.cat(parts))
    tree[3 + bucket : 2 + 2 * bucket].copy_(parents)


def learn(tree: torch.Tensor, drafting: DraftingInputs, shape: DeviceTreeShape, packed: torch.Tensor,
          tokens: torch.Tensor, topk: torch.Tensor, bucket: int) -> None:  # fmt: skip
    """After a verify step: the committed tokens and the bonus into the history, the step's top-k
    into the successor table, and the committed length advanced (`tree[0]`).

    packed: `Verdict.packed` (path length L, bonus, B path nodes, B path tokens, ...); tokens,
    topk: the verified tree's tokens (B,) and top-k rows (B, K).
    """
    committed, length = tree[0:1], packed[0:1]
    slots = committed + torch.arange(bucket, device=tree.device)
    # The path's tokens (root first) from the committed length on; the padding past the path
    # lands past the new length, where nothing reads it.
    drafting.history.index_copy_(0, slots, packed[2 + bucket : 2 + 2 * bucket])
    drafting.history.index_copy_(0, committed + length, packed[1:2])
    if shape.template_parents:
        record_successors(drafting.table, tokens, topk)
    tree[0:1].add_(length)
