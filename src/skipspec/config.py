"""Frozen, validated configuration values. Invalid combinations fail at construction, not mid-generation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import ConfigError

# SWIFT's dynamic tree: how many candidates of a draft depth enter the tree, by that depth's top-1
# probability (p > threshold -> width). Below the last threshold, `tree_default_width`.
DEFAULT_TREE_SCHEDULE: tuple[tuple[float, int], ...] = ((0.95, 3), (0.8, 5), (0.5, 8))


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _index_tuple(name: str, value: Sequence[int] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(sorted({int(v) for v in value}))
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of layer indices, got {value!r}") from None
    _check(all(v >= 0 for v in out), f"{name} has negative layer indices: {list(value)}")
    return out


#: Search objectives, each also the name of a preset of the search's other settings.
OBJECTIVES = ("speed", "paper")

# What a `SearchConfig` field left at None becomes, per objective. "paper" is SWIFT's reference
# settings (one proposal per step, stop at matchness > 0.93, after 300 proposals without
# improvement or 1000 in all); "speed" spends a bounded share of each step and re-looks for ever.
_PRESETS: dict[str, dict[str, float]] = {
    "paper": dict(bayes_interval=25, stop_score=0.93, patience=300, max_proposals=1000,
                  step_budget=math.inf, proposals_per_step=1),
    "speed": dict(bayes_interval=0, stop_score=math.inf, patience=24, max_proposals=200,
                  step_budget=0.03, proposals_per_step=2),
}  # fmt: skip


@dataclass(frozen=True)
class SearchConfig:
    """The on-the-fly skip-set search (`skipspec.search`). Fields left at None take the objective's preset.

    objective: "speed" (maximise expected tokens/s from measured costs; the empty set, i.e. plain
        decoding, is a candidate) or "paper" (SWIFT: maximise matchness at a fixed skip ratio).
    context_window: generated tokens a candidate is scored on; the search starts once a request
        has produced `context_window + 1` tokens.
    skip_ratio: "paper" only: every proposal skips int(2 * (layers - 2) * skip_ratio) sublayers.
    bayes_interval: every n-th proposal comes from Bayesian optimisation (0: never).
    stop_score: "paper": stop for good once a set's matchness exceeds this (inf: never).
    patience: stop after this many proposals without improvement ("speed": per round).
    max_proposals: stop after this many proposals ("speed": per round).
    step_budget: seconds the search may spend per verify step, as a fraction of the measured cost
        of a plain step, on average (inf: no time cap, only `proposals_per_step`).
    proposals_per_step: at most this many scoring forwards per verify step.
    relook_steps: "speed": verify steps between a settled search and the next look (doubles while
        nothing changes, up to 32x).
    min_gain: "speed": a set must beat plain decoding's expected tokens/s by this fraction.
    persist: read and write chosen sets in the layer-set store (`skipspec.search.store`).
    task: the store's task tag (sets are kept per model, dtype, device kind and task).
    seed: seeds the random proposals.
    """

    objective: str = "speed"
    context_window: int = 32
    skip_ratio: float = 0.45
    bayes_interval: int | None = None
    stop_score: float | None = None
    patience: int | None = None
    max_proposals: int | None = None
    step_budget: float | None = None
    proposals_per_step: int | None = None
    relook_steps: int = 256
    min_gain: float = 0.03
    persist: bool = True
    task: str = "default"
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name, value in _PRESETS[self.objective].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

        def whole(name: str, low: int) -> None:
            v = getattr(self, name)
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
            _check(ok, f"{name} must be an integer >= {low}, got {v!r}")

        def number(name: str) -> float:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
            _check(ok, f"{name} must be a number, got {v!r}")
            return float(v)

        for name, low in (("context_window", 1), ("bayes_interval", 0), ("patience", 1), ("max_proposals", 1),
                          ("proposals_per_step", 1), ("relook_steps", 1), ("seed", 0)):  # fmt: skip
            whole(name, low)
        _check(0.0 < number("skip_ratio") < 1.0, f"skip_ratio must be in (0, 1), got {self.skip_ratio!r}")
        _check(number("stop_score") > 0.0, f"stop_score must be > 0 (inf: never stop on score), got {self.stop_score!r}")
        _check(number("step_budget") > 0.0, f"step_budget must be > 0 (inf: no time cap), got {self.step_budget!r}")
        _check(0.0 <= number("min_gain") < 1.0, f"min_gain must be in [0, 1), got {self.min_gain!r}")
        _check(isinstance(self.persist, bool), f"persist must be True or False, got {self.persist!r}")
        _check(isinstance(self.task, str) and bool(self.task.strip()), f"task must be a non-empty string, got {self.task!r}")


@dataclass(frozen=True)
class SwiftConfig:
    """How SWIFT drafts and verifies.

    skip_attn / skip_mlp: layer indices whose attention / MLP sublayer the draft skips. Both None
    means SWIFT's starting set (every other inner layer). Indices are checked against the model
    when a decoder is built.
    optimize: search a better skip set while generating (see `skipspec.search` and `search`).
    When False the given (or starting) set is used throughout.
    search: how the search runs: a `SearchConfig`, or just an objective/preset name
    ("speed", the default: maximise measured tokens/s, plain decoding included; "paper": SWIFT's
    own matchness search at a fixed skip ratio).
    confidence_threshold, max_draft_tokens, topk, tree_schedule, tree_default_width: SWIFT's
    drafting rule (see `drafting.layer_skip`).
    verify_topk: top-k token ids kept from the full model's logits at every verified node and
    handed to drafters (`StepResult.topk`: what token recycling learns from).
    """

    skip_attn: tuple[int, ...] | None = None
    skip_mlp: tuple[int, ...] | None = None
    optimize: bool = True
    search: SearchConfig | str | None = None
    confidence_threshold: float = 0.8
    max_draft_tokens: int = 25
    topk: int = 10
    tree_schedule: tuple[tuple[float, int], ...] = DEFAULT_TREE_SCHEDULE
    tree_default_width: int = 10
    verify_topk: int = 8

    def __post_init__(self) -> None:
        search = SearchConfig() if self.search is None else self.search
        if isinstance(search, str):
            search = SearchConfig(objective=search)
        _check(isinstance(search, SearchConfig), f"search must be a SearchConfig or an objective name, got {search!r}")
        object.__setattr__(self, "search", search)
        _check(isinstance(self.optimize, bool), f"optimize must be True or False, got {self.optimize!r}")
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
        _check(
            isinstance(self.verify_topk, int) and self.verify_topk >= 1,
            f"verify_topk must be an integer >= 1, got {self.verify_topk!r}",
        )
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
    seed: int | None = None

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
