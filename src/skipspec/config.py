"""Frozen, validated configuration values. Invalid combinations fail at construction, not mid-generation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .errors import ConfigError

# SWIFT's dynamic tree: how many candidates of a draft depth enter the tree, by that depth's top-1
# probability (p > threshold -> width). Below the last threshold, `tree_default_width`.
DEFAULT_TREE_SCHEDULE: tuple[tuple[float, int], ...] = ((0.95, 3), (0.8, 5), (0.5, 8))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _index_tuple(name: str, value: Optional[Sequence[int]]) -> Optional[tuple[int, ...]]:
    if value is None:
        return None
    try:
        out = tuple(sorted({int(v) for v in value}))
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of layer indices, got {value!r}") from None
    _check(all(v >= 0 for v in out), f"{name} has negative layer indices: {list(value)}")
    return out


@dataclass(frozen=True)
class SwiftConfig:
    """How SWIFT drafts and verifies.

    skip_attn / skip_mlp: layer indices whose attention / MLP sublayer the draft skips. Both None
    means SWIFT's starting set (every other inner layer). Indices are checked against the model
    when a decoder is built.
    optimize: search a better skip set while generating (see `skipspec.search`). When False the
    given (or starting) set is used throughout.
    """

    skip_attn: Optional[tuple[int, ...]] = None
    skip_mlp: Optional[tuple[int, ...]] = None
    optimize: bool = False
    confidence_threshold: float = 0.8
    max_draft_tokens: int = 25
    topk: int = 10
    tree_schedule: tuple[tuple[float, int], ...] = DEFAULT_TREE_SCHEDULE
    tree_default_width: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "skip_attn", _index_tuple("skip_attn", self.skip_attn))
        object.__setattr__(self, "skip_mlp", _index_tuple("skip_mlp", self.skip_mlp))
        _check(
            isinstance(self.confidence_threshold, (int, float)) and 0.0 <= self.confidence_threshold <= 1.0,
            f"confidence_threshold must be in [0, 1], got {self.confidence_threshold!r}",
        )
        _check(
            isinstance(self.max_draft_tokens, int) and self.max_draft_tokens >= 1,
            f"max_draft_tokens must be an integer >= 1, got {self.max_draft_tokens!r}",
        )
        _check(isinstance(self.topk, int) and self.topk >= 1, f"topk must be an integer >= 1, got {self.topk!r}")
        schedule = tuple((float(p), int(w)) for p, w in self.tree_schedule)
        object.__setattr__(self, "tree_schedule", schedule)
        _check(
            all(0.0 <= p <= 1.0 and w >= 1 for p, w in schedule),
            f"tree_schedule entries must be (probability in [0,1], width >= 1), got {schedule}",
        )
        _check(
            list(schedule) == sorted(schedule, key=lambda e: -e[0]),
            f"tree_schedule thresholds must be in decreasing order, got {schedule}",
        )
        _check(
            isinstance(self.tree_default_width, int) and self.tree_default_width >= 1,
            f"tree_default_width must be an integer >= 1, got {self.tree_default_width!r}",
        )

    @property
    def max_tree_nodes(self) -> int:
        """Upper bound on draft nodes in one verification tree (root excluded)."""
        widest = max([self.tree_default_width] + [w for _, w in self.tree_schedule])
        return self.max_draft_tokens * min(widest, self.topk)


@dataclass(frozen=True)
class SamplingParams:
    """Target-distribution settings. `do_sample=False` is greedy (argmax), and then the rest is ignored."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        _check(
            isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0,
            f"temperature must be a finite number > 0, got {self.temperature!r} (use do_sample=False for greedy)",
        )
        _check(
            isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0,
            f"top_p must be in (0, 1], got {self.top_p!r}",
        )
        _check(
            isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0,
            f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}",
        )
        _check(self.seed is None or isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")


@dataclass(frozen=True)
class GenerationResult:
    """What `SwiftDecoder.generate` returns: the new token ids (prompt excluded) and run statistics."""

    tokens: list[int]
    stats: dict = field(default_factory=dict)
