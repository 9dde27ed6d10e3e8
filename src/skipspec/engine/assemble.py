"""From the drafters' proposals to the one tree a step verifies: checks, then one merged tree.

Every proposal is checked before anything runs; what can only be checked on the device (tokens
and parents that are device tensors) is checked inside the verify step and reported back in its
one read-back (`Verified.fault`), before the host commits anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..drafting import DraftContext, Drafter, DraftTree
from ..errors import DrafterError
from ..runtime.executor import Part, TreeInput
from ..tree.merge import MergedTree, check_parents, merge_trees, split_path


@dataclass(frozen=True)
class Proposal:
    drafter: Drafter
    tree: DraftTree | None


@dataclass(frozen=True)
class Owners:
    """Which proposal each node of the verified tree came from.

    Host trees are merged (`tree.merge_trees`: identical prefixes become one node, credited to
    each source) into the first `len(merged)` nodes; device trees follow side by side, each a
    contiguous range.

    names:  per proposal, its drafter's name
    kept:   per proposal, how many of its nodes the verified tree holds
    merged: the host trees' merge (None when there was none), its sources being `host`
    host:   the proposal index of each of `merged`'s sources
    ranges: (proposal index, first node, nodes) per device tree
    """

    names: tuple[str, ...] = ()
    kept: tuple[int, ...] = ()
    merged: MergedTree | None = None
    host: tuple[int, ...] = ()
    ranges: tuple[tuple[int, int, int], ...] = ()

    def paths(self, path: Sequence[int]) -> list[tuple[int, ...]]:
        """The accepted path's nodes per proposal, as indices into that proposal's own tree."""
        out: list[tuple[int, ...]] = [()] * len(self.names)
        size = len(self.merged) if self.merged is not None else 0
        if self.merged is not None:
            for s, own in zip(self.host, split_path(self.merged, [i for i in path if i < size])):
                out[s] = own
        for s, start, n in self.ranges:
            out[s] = tuple(i - start for i in path if start <= i < start + n)
        return out

    def name_of(self, node: int) -> str:
        """The drafter of a node (the first one, for a merged node)."""
        size = len(self.merged) if self.merged is not None else 0
        if node < size:
            return self.names[self.host[self.merged.origins[node][0][0]]]
        return next((self.names[s] for s, start, n in self.ranges if start <= node < start + n), "?")

    def offset_of(self, node: int) -> int:
        """`node` as an index into its drafter's own tree."""
        size = len(self.merged) if self.merged is not None else 0
        if node < size:
            return self.merged.origins[node][0][1]
        return next((node - start for s, start, n in self.ranges if start <= node < start + n), node)


def check_tree(tree: DraftTree, name: str, max_nodes: int, vocab_size: int, device: torch.device) -> tuple[Part, Part, int]:
    """A proposal's tokens and parents as the executor takes them, checked as far as the host can.

    Host values are checked here; tensors on the model's device keep their values there (checked
    inside the step), only their shapes are checked here.
    Raises `DrafterError` naming the drafter and the fault.
    """
    tokens, parents = (
        _part(values, name, what, device) for values, what in ((tree.tokens, "tokens"), (tree.parents, "parents"))
    )
    n, m = _len(tokens), _len(parents)
    if n != m:
        raise DrafterError(f"drafter {name!r} proposed {n} tokens but {m} parents")
    if n > max_nodes:
        raise DrafterError(f"drafter {name!r} proposed {n} nodes, more than its budget of {max_nodes}")
    if isinstance(tokens, list) and tokens and not (0 <= min(tokens) and max(tokens) < vocab_size):
        bad = next(t for t in tokens if not 0 <= t < vocab_size)
        raise DrafterError(f"drafter {name!r} proposed token {bad}, outside the vocabulary [0, {vocab_size})")
    if isinstance(parents, list):
        check_parents(name, parents)
    return tokens, parents, n


def _part(values, name: str, what: str, device: torch.device) -> Part:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
            raise DrafterError(
                f"drafter {name!r}: {what} must be a 1-D integer tensor, got {tuple(values.shape)} {values.dtype}"
            )
        if values.device != device:
            return values.tolist()  # a CPU tensor for a GPU model: reading it costs no sync
        return values
    if type(values) is list and all(type(v) is int for v in values):
        return values  # the built-in drafters' lists: already ints, nothing to convert
    try:
        return [_int(v) for v in values]
    except (TypeError, ValueError):
        raise DrafterError(f"drafter {name!r}: {what} must be a sequence of ints, got {values!r:.80}") from None


def _int(v) -> int:
    if isinstance(v, bool) or int(v) != v:
        raise TypeError(v)
    return int(v)


def _len(part: Part) -> int:
    return int(part.shape[0]) if isinstance(part, torch.Tensor) else len(part)


def assemble(proposals: Sequence[Proposal], ctx: DraftContext) -> tuple[TreeInput | None, Owners]:
    """Check each proposal and make one tree of them under the root; None when nobody drafted.

    Each proposal may hold up to its share of `ctx.max_nodes`; host trees are merged (identical
    prefixes become one node), device trees placed side by side after them.
    """
    device = ctx.executor.adapter.device if ctx.executor is not None else torch.device("cpu")
    names = tuple(p.drafter.name for p in proposals)
    host_trees: list[tuple[str, DraftTree]] = []
    host: list[int] = []
    device_parts: list[tuple[int, torch.Tensor, Part, int]] = []
    kept = [0] * len(proposals)
    for s, p in enumerate(proposals):
        if p.tree is None or len(p.tree) == 0:
            continue
        budget = share(ctx.max_nodes, s, len(proposals))
        tokens, parents, n = check_tree(p.tree, p.drafter.name, budget, ctx.vocab_size, device)
        if isinstance(tokens, torch.Tensor):
            device_parts.append((s, tokens, parents, n))
        else:
            host_trees.append((p.drafter.name, DraftTree(tokens, parents)))
            host.append(s)
    merged = merge_trees(host_trees, ctx.max_nodes, checked=True) if host_trees else None
    token_parts: list[Part] = []
    parent_parts: list[Part] = []
    size = 0
    if merged is not None and len(merged):
        token_parts.append(merged.tokens)
        parent_parts.append(merged.parents)
        size = len(merged)
        for s, n in zip(host, merged.sizes):
            kept[s] = n
    ranges = []
    for s, tokens, parents, n in device_parts:
        token_parts.append(tokens)
        parent_parts.append(_offset(parents, size))
        ranges.append((s, size, n))
        kept[s] = n
        size += n
    owners = Owners(names, tuple(kept), merged, tuple(host), tuple(ranges))
    if size == 0:
        return None, owners
    return TreeInput(tuple(token_parts), tuple(parent_parts), size), owners


def share(budget: int, i: int, n: int) -> int:
    """Proposal i's equal share of the node budget (the first ones get the remainder)."""
    return budget // n + (i < budget % n)


def _offset(parents: Part, offset: int) -> Part:
    """Parents of a proposal placed `offset` nodes into the tree (its roots stay the root's children)."""
    if offset == 0:
        return parents
    if isinstance(parents, torch.Tensor):
        return torch.where(parents >= 0, parents + offset, parents)  # bad values stay bad: still caught
    return [p + offset if p >= 0 else p for p in parents]


def describe_fault(fault: tuple[int, int], owners: Owners, vocab_size: int) -> str:
    node, kind = fault
    name = owners.name_of(node)
    start = dict(zip(owners.names, owners.ranges)).get(name, (0, 0))[0]
    what = (
        "has a parent that is not -1 or an earlier node"
        if kind == 1
        else f"has a token outside the vocabulary [0, {vocab_size})"
    )
    return f"drafter {name!r} proposed a malformed tree: node {node - start} {what}"
