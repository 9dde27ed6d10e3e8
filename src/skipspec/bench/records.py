"""Frozen values passed between the benchmark's stages: settings in, per-prompt records out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ConfigError

#: The methods every run should include when it can: speedups are reported against them.
BASELINES = ("ar", "hf")

#: What `skipspec bench` runs unless told otherwise: the engine's default method and SWIFT against both baselines.
DEFAULT_METHODS = ("ar", "hybrid", "swift", "hf", "hf-pld")


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
    because it only has to pay first-call costs (allocator, kernels, lazy imports). Before it,
    a method with `prepare` readies itself for the run's longest context (cache, CUDA graphs).
    draft_model: the draft for `hf-assisted`, loaded (like `model`, on its device and in its dtype) only
    when a chosen method needs one.
    command: the exact command line, recorded with the results.
    tensor_parallel: load the model split over the ranks torchrun started (`skipspec.parallel`); rank
    0 runs the bench and writes the results, the other ranks run its steps with it.
    device_drafting: the engine's methods may draft their trees on the device
    (`RuntimeConfig.device_drafting`: on a GPU, the default); False drafts every tree on the host.
    """

    model: str
    suites: tuple[str, ...]
    methods: tuple[str, ...] = DEFAULT_METHODS
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
    draft_model: str | None = None
    command: str = ""
    tensor_parallel: bool = False
    device_drafting: bool = True

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
    """One generation by one method: new token ids, the method's own statistics, and when the
    tokens arrived.

    stats uses the engine's keys; a method that cannot know one (e.g. `drafted_tokens` for
    transformers' prompt lookup) leaves it out. arrivals: one (seconds since the call started,
    tokens in the chunk) per chunk of new tokens handed out, in order; empty when not observed.
    """

    tokens: tuple[int, ...]
    stats: dict
    arrivals: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class WarmUp:
    """What a method paid before timing started (its cold start), each part None when not run.

    prepare_s: `method.prepare(max_context, settings)` (cache and graphs at the run's longest context).
    generate_s: the short untimed generation. graph_captures: graphs captured during it.
    """

    prepare_s: float | None = None
    generate_s: float | None = None
    graph_captures: int | None = None

    @property
    def total_s(self) -> float | None:
        parts = [t for t in (self.prepare_s, self.generate_s) if t is not None]
        return sum(parts) if parts else None


@dataclass(frozen=True)
class PromptRecord:
    """One method on one prompt, after its repeats.

    time_s: median wall time of `times` (prefill included, device synchronized).
    verify_steps / mean_accepted: forwards after the prefill and tokens per such forward
    (Spec-Bench's tau, bonus token included); None when the method cannot count them.
    drafting_steps: those of the verify steps whose tree was drafted on the device
    (`runtime.device_drafting`); None when the method cannot count them.
    accepted_tokens / drafted_tokens: draft tokens accepted / proposed; None when unknown.
    mean_tree_nodes: draft tree nodes verified per verify step; host_share: host drafting time over
    drafting + verifying time; drafted_by_source / accepted_by_source: draft tokens per drafter
    (engine methods only).
    graph_captures: graphs captured during the timed repeats, all of them (0 once warmed up).
    ttft_s: time to the first new token, one per repeat. itl_s: the gap before every later token,
    all repeats in a row; a chunk of several tokens arriving at once counts its gap for its first
    token and 0 for the others (see `metrics.token_latencies`).
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
    drafting_steps: int | None = None
    mean_accepted: float | None = None
    accepted_tokens: int | None = None
    drafted_tokens: int | None = None
    accepted_per_step: tuple[int, ...] = ()
    draft_time: float | None = None
    verify_time: float | None = None
    optimize_time: float | None = None
    skip_attn: tuple[int, ...] = ()
    skip_mlp: tuple[int, ...] = ()
    mean_tree_nodes: float | None = None
    host_share: float | None = None
    drafted_by_source: dict[str, int] = field(default_factory=dict)
    accepted_by_source: dict[str, int] = field(default_factory=dict)
    graph_captures: int | None = None
    ttft_s: tuple[float, ...] = ()
    itl_s: tuple[float, ...] = ()
    identical_to_ar: bool | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.time_s if self.time_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}
