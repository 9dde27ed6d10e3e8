"""The skip set: which attention and MLP sublayers a draft forward leaves out.

An immutable, hashable value, so it can key caches (compiled graphs, saved search results) and be
passed around without anyone mutating a shared copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class SkipSet:
    """Indices of decoder layers whose attention (`attn`) or MLP (`mlp`) sublayer is skipped."""

    attn: frozenset[int] = frozenset()
    mlp: frozenset[int] = frozenset()

    @classmethod
    def of(cls, attn: Iterable[int] = (), mlp: Iterable[int] = ()) -> SkipSet:
        return cls(frozenset(int(i) for i in attn), frozenset(int(i) for i in mlp))

    @classmethod
    def empty(cls) -> SkipSet:
        return cls()

    @classmethod
    def starting(cls, num_layers: int) -> SkipSet:
        """SWIFT's starting set: every other layer's attention and MLP, first and last layer kept.

        >>> SkipSet.starting(6).attn
        frozenset({1, 3})
        """
        inner = range(1, num_layers - 1, 2)
        return cls.of(inner, inner)

    @classmethod
    def from_slots(cls, slots: Iterable[int], num_layers: int) -> SkipSet:
        """Build from flat slot indices: slot s < L-2 is attention of layer s+1, else MLP of layer s-(L-2)+1."""
        n = num_layers - 2
        attn, mlp = [], []
        for s in slots:
            if not 0 <= s < 2 * n:
                raise ConfigError(f"slot {s} out of range for {num_layers} layers")
            (attn if s < n else mlp).append((s % n) + 1)
        return cls.of(attn, mlp)

    def slots(self, num_layers: int) -> tuple[int, ...]:
        """Inverse of `from_slots`: sorted flat slot indices."""
        n = num_layers - 2
        return tuple(sorted([i - 1 for i in self.attn] + [n + i - 1 for i in self.mlp]))

    def __len__(self) -> int:
        return len(self.attn) + len(self.mlp)

    def validate(self, num_layers: int) -> SkipSet:
        """Raise ConfigError unless every index names an inner layer (first and last are never skipped)."""
        for kind, idx in (("skip_attn", self.attn), ("skip_mlp", self.mlp)):
            bad = sorted(i for i in idx if not 1 <= i <= num_layers - 2)
            if bad:
                raise ConfigError(
                    f"{kind} has layer indices {bad} out of range: with {num_layers} layers only "
                    f"1..{num_layers - 2} can be skipped (the first and last layer never are)"
                )
        return self

    def as_dict(self) -> dict[str, list[int]]:
        return {"skip_attn": sorted(self.attn), "skip_mlp": sorted(self.mlp)}

    def __repr__(self) -> str:
        return f"SkipSet(attn={sorted(self.attn)}, mlp={sorted(self.mlp)})"


#: The empty skip set: the full model.
NO_SKIP = SkipSet.empty()
