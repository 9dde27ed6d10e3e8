"""From the drafters' proposals to the one tree a step verifies: checks, then side by side.

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


@dataclass(frozen=True)
class Proposal:
    drafter: Drafter
    tree: DraftTree | None


@dataclass(frozen=True)
class Owners:
    """Which proposal each node of the verified tree came from: contiguous ranges, in proposal order.

    >>> o = Owners(("a", "b"), ((0, 2), (2, 3)))
    >>> o.paths((1, 3, 4)), o.name_of(3)
    ([(1,), (1, 2)], 'b')
    """

    names: tuple[str, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()  # (first node, nodes) per proposal

    def paths(self, path: Sequence[int]) -> list[tuple[int, ...]]:
        """The accepted path's nodes per proposal, as indices into that proposal's own tree."""
        return [tuple(i - start for i in path if start <= i < start + size) for start, size in self.ranges]

    def name_of(self, node: int) -> str:
        for name, (start, size) in zip(self.names, self.ranges):
            if start <= node < start + size:
                return name
        return "?"


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
        for i, p in enumerate(parents):
            if not -1 <= p < i:
                raise DrafterError(
                    f"drafter {name!r}: node {i} has parent {p}; a parent must be -1 (the root) or an earlier node"
                )
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
    """Check each proposal and put them side by side under the root; None when nobody drafted."""
    device = ctx.executor.adapter.device if ctx.executor is not None else torch.device("cpu")
    tokens: list[Part] = []
    parents: list[Part] = []
    names, ranges = [], []
    size = 0
    for p in proposals:
        n = 0
        if p.tree is not None and len(p.tree) > 0:
            share = ctx.max_nodes if len(proposals) == 1 else _share(ctx.max_nodes, len(ranges), len(proposals))
            toks, pars, n = check_tree(p.tree, p.drafter.name, share, ctx.vocab_size, device)
            tokens.append(toks)
            parents.append(_offset(pars, size))
        names.append(p.drafter.name)
        ranges.append((size, n))
        size += n
    owners = Owners(tuple(names), tuple(ranges))
    if size == 0:
        return None, owners
    return TreeInput(tuple(tokens), tuple(parents), size), owners


def _share(budget: int, i: int, n: int) -> int:
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
