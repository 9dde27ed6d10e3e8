"""Frozen values passed between the benchmark's stages: settings in, per-prompt records out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ConfigError

#: The methods every run should include when it can: speedups are reported against them.
BASELINES = ("ar", "hf")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class GenSettings:
    """What every method is asked to do for one prompt (the same for all of them)."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0

    def __post_init__(self) -> None:
        _check(
            isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
            f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}",
        )
        _check(self.temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class BenchConfig:
    """One `skipspec bench` run.

    categories: only these prompt categories (None: all).
    repeats: timed runs per (prompt, method); the median time is kept.
    warmup_tokens: length of the one untimed generation per method before timing starts; short,
    because it only has to pay first-call costs (allocator, kernels, lazy imports).
    command: the exact command line, recorded with the results.
    """

    model: str
    suites: tuple[str, ...]
    methods: tuple[str, ...] = ("ar", "swift", "hf", "hf-pld")
    limit: int | None = None
    categories: tuple[str, ...] | None = None
    settings: GenSettings = field(default_factory=GenSettings)
    repeats: int = 1
    out: str = "bench-out"
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    warmup_tokens: int = 16
    progress: bool = True
    plots: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "suites", tuple(self.suites))
        object.__setattr__(self, "methods", tuple(self.methods))
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(self.categories))
        _check(bool(self.suites), "at least one suite is needed")
        _check(bool(self.methods), "at least one method is needed")
        _check(len(set(self.methods)) == len(self.methods), f"methods repeat: {list(self.methods)}")
        _check(self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit!r}")
        _check(self.repeats >= 1, f"repeats must be >= 1, got {self.repeats!r}")
        _check(self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads!r}")
        _check(self.warmup_tokens >= 0, f"warmup_tokens must be >= 0, got {self.warmup_tokens!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Outcome:
    """One generation by one method: new token ids and the method's own statistics.

    stats uses the engine's keys; a method that cannot know one (e.g. `drafted_tokens` for
    transformers' prompt lookup) leaves it out.
    """

    tokens: tuple[int, ...]
    stats: dict


@dataclass(frozen=True)
class PromptRecord:
    """One method on one prompt, after its repeats.

    time_s: median wall time of `times` (prefill included, device synchronized).
    verify_steps / mean_accepted: forwards after the prefill and tokens per such forward
    (Spec-Bench's tau, bonus token included); None when the method cannot count them.
    accepted_tokens / drafted_tokens: draft tokens accepted / proposed; None when unknown.
    identical_to_ar: output tokens equal `ar`'s on this prompt (None without an `ar` run).
    """

    prompt_id: str
    category: str
    method: str
    prompt_tokens: int
    new_tokens: int
    time_s: float
    times: tuple[float, ...]
    tokens: tuple[int, ...]
    verify_steps: int | None = None
    mean_accepted: float | None = None
    accepted_tokens: int | None = None
    drafted_tokens: int | None = None
    accepted_per_step: tuple[int, ...] = ()
    draft_time: float | None = None
    verify_time: float | None = None
    optimize_time: float | None = None
    skip_attn: tuple[int, ...] = ()
    skip_mlp: tuple[int, ...] = ()
    identical_to_ar: bool | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.time_s if self.time_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}
