"""Decoding methods under test, by name: a read-only registry of name -> factory.

Every method is built once per run from the same model object, tokenizer and stop ids, and then
asked to generate for each prompt with the same `GenSettings`. To add one (an engine preset, say),
write a factory `(MethodContext) -> Method` and add a `MethodSpec` to `_BUILTIN` below; callers
of `skipspec.bench.run_bench` may also pass their own mapping.

A method reports when its tokens reached the caller (`Outcome.arrivals`): the engine's through
`SwiftDecoder.stream`, transformers' through a streamer passed to `generate`. Observing costs a
clock read per chunk; transformers copies each step's tokens to the host for a streamer, which its
stopping check does anyway.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import torch

from ..config import SamplingParams, SearchConfig, SwiftConfig
from ..errors import ConfigError
from .records import GenSettings, Outcome

#: Engine stats copied into a record (the rest are recomputed by the benchmark or not needed).
ENGINE_STAT_KEYS = (
    "verify_steps", "drafting_steps", "mean_accepted", "accepted_tokens", "drafted_tokens", "accepted_per_step",
    "draft_time", "verify_time", "optimize_time", "skip_attn", "skip_mlp", "mean_tree_nodes", "host_share",
    "drafted_by_source", "accepted_by_source", "graph_captures", "capture_time",
)  # fmt: skip

#: transformers' prompt lookup: how many tokens to copy from the context per step.
PLD_NUM_TOKENS = 10

#: New tokens of the generation that readies a decoder without a `warmup` (prompt: the rest of the context).
PREPARE_TOKENS = 4


@dataclass(frozen=True)
class MethodContext:
    """What every method is built from: one model object shared by all methods of a run.

    draft: the draft model of `BenchConfig.draft_model` (None when none was asked for).
    device_drafting: `BenchConfig.device_drafting`, for the engine's methods.
    """

    model: torch.nn.Module
    tokenizer: Any
    stop_ids: tuple[int, ...]
    draft: torch.nn.Module | None = None
    device_drafting: bool = True


class Method(Protocol):
    """Generates for one prompt. It may also have `prepare(max_context: int, settings: GenSettings)`,
    called once before timing so that no request of the run pays a one-off cost (cache
    allocation, graph capture)."""

    def generate(self, ids: Sequence[int], settings: GenSettings) -> Outcome: ...


@dataclass(frozen=True)
class MethodSpec:
    """needs_draft: the factory uses `MethodContext.draft`, so the run must load a draft model.
    sharded: the method runs on a tensor-parallel model (its forwards go through a `SwiftDecoder`,
    whose steps the other ranks follow)."""

    name: str
    description: str
    factory: Callable[[MethodContext], Method]
    needs_draft: bool = False
    sharded: bool = True


class EngineMethod:
    """This engine: `SwiftDecoder.stream` with one of its methods ("ar", "swift", "hybrid", ...).

    The decoder lives as long as the run, so a skip set chosen on one prompt (and the drafters'
    learnt statistics) carry over to the next, as they do for a long-lived decoder in real use.
    `graph_captures` and `capture_time` are reported per request (the decoder's own are totals).
    """

    def __init__(self, ctx: MethodContext, config: SwiftConfig, mode: str) -> None:
        from ..engine import SwiftDecoder
        from ..runtime import RuntimeConfig

        runtime = RuntimeConfig(device_drafting=None if ctx.device_drafting else False)
        self.decoder = SwiftDecoder(ctx.model, config, stop_token_ids=ctx.stop_ids, runtime=runtime)
        self.mode = mode

    def prepare(self, max_context: int, settings: GenSettings) -> None:
        """Allocate the cache and capture the graphs for contexts up to `max_context` tokens, for
        the run's sampling settings (a sampled run's steps are other graphs than greedy ones)."""
        warmup = getattr(self.decoder, "warmup", None)
        if warmup is not None:
            # Only this method's one-off costs, where the decoder can be told the method (so the
            # cold start reported per method is its own) and the sampling.
            accepted = inspect.signature(warmup).parameters
            told: dict = {"methods": (self.mode,)} if "methods" in accepted else {}
            if "sampling" in accepted:
                told["sampling"] = (_sampling(settings),)
            warmup(max_context=max_context, **told)
            return
        # A request of that length sizes the cache the same way. Plain decoding, so no drafter
        # learns from this made-up prompt.
        new = min(PREPARE_TOKENS, max_context - 1)
        self.decoder.generate([0] * (max_context - new), new, method="ar")

    def generate(self, ids: Sequence[int], settings: GenSettings) -> Outcome:
        executor = self.decoder.executor
        captures, capture_time = getattr(executor, "captures", 0), getattr(executor, "capture_time", 0.0)
        start = time.perf_counter()
        sampling = _sampling(settings)
        stream = self.decoder.stream(
            list(ids), settings.max_new_tokens, method=self.mode,
            do_sample=sampling.do_sample, temperature=sampling.temperature, seed=sampling.seed,
        )  # fmt: skip
        arrivals, seen = [], 0
        for _ in stream:
            if len(stream.tokens) > seen:  # the first token of a chunk: the whole chunk is in `tokens`
                arrivals.append((time.perf_counter() - start, len(stream.tokens) - seen))
                seen = len(stream.tokens)
        res = stream.result
        stats = {k: res.stats[k] for k in ENGINE_STAT_KEYS if k in res.stats}
        stats["graph_captures"] = stats.get("graph_captures", captures) - captures
        stats["capture_time"] = stats.get("capture_time", capture_time) - capture_time
        return Outcome(tuple(res.tokens), stats, tuple(arrivals))


def _sampling(settings: GenSettings) -> SamplingParams:
    """The engine's sampling parameters for a run's settings (temperature 0: greedy)."""
    return SamplingParams(do_sample=settings.do_sample, temperature=settings.temperature or 1.0, seed=settings.seed)


class _Arrivals:
    """A transformers streamer (`put` / `end`) that notes when each chunk of new tokens arrives."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.chunks: list[tuple[float, int]] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # `generate` puts the prompt first
            self._prompt_seen = True
            return
        self.chunks.append((time.perf_counter() - self.start, int(value.numel())))

    def end(self) -> None:
        pass


class HFMethod:
    """transformers' own `generate`, with everything that could differ from the engine pinned.

    An explicit GenerationConfig (top_k=0, top_p=1, no repetition penalty) so the model's saved
    generation defaults cannot change the decoding rule; an explicit all-ones attention mask; the
    same stop ids. Forwards of the target are counted with a hook, so prompt lookup and assisted
    generation report tokens per step. `assistant`: a draft model for assisted generation.
    """

    def __init__(self, ctx: MethodContext, assistant: torch.nn.Module | None = None, **extra: Any) -> None:
        self.model = ctx.model
        self.stop_ids = list(ctx.stop_ids)
        pad = getattr(ctx.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (self.stop_ids[0] if self.stop_ids else 0)
        self.assistant = assistant
        self.extra = extra
        # transformers' assisted loop (prompt lookup, a draft model) has no separate prefill: its
        # first forward already verifies candidates.
        self.assisted = assistant is not None or "prompt_lookup_num_tokens" in extra

    def _config(self, settings: GenSettings):
        from transformers import GenerationConfig

        # top_k / top_p only when sampling: greedy ignores them and transformers warns about them.
        sampling = (
            dict(do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0)
            if settings.do_sample
            else dict(do_sample=False)
        )
        return GenerationConfig(
            max_new_tokens=settings.max_new_tokens, min_new_tokens=0, eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id, repetition_penalty=1.0, num_beams=1, **sampling, **self.extra,
        )  # fmt: skip

    def generate(self, ids: Sequence[int], settings: GenSettings) -> Outcome:
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([list(ids)], device=device)
        forwards = [0]
        hook = self.model.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
        assistant = {} if self.assistant is None else {"assistant_model": self.assistant}
        try:
            if settings.do_sample:
                torch.manual_seed(settings.seed)
            streamer = _Arrivals()
            with torch.no_grad():
                out = self.model.generate(
                    input_ids, attention_mask=torch.ones_like(input_ids), generation_config=self._config(settings),
                    streamer=streamer, **assistant,
                )  # fmt: skip
        finally:
            hook.remove()
        tokens = tuple(int(t) for t in out[0, input_ids.shape[1] :].tolist())
        # Plain decoding: the first forward is the prefill, which yields the first token.
        steps = forwards[0] if self.assisted else forwards[0] - 1
        stats: dict = {"verify_steps": steps}
        if steps > 0:
            stats["mean_accepted"] = (len(tokens) if self.assisted else len(tokens) - 1) / steps
        return Outcome(tokens, stats, tuple(streamer.chunks))


def _assisted(ctx: MethodContext) -> HFMethod:
    if ctx.draft is None:
        raise ConfigError("hf-assisted needs a draft model: pass --draft-model (BenchConfig.draft_model)")
    return HFMethod(ctx, assistant=ctx.draft)


def check_draft(model: torch.nn.Module, draft: torch.nn.Module, draft_ref: str) -> None:
    """A draft must propose the target's tokens: the same vocabulary size, as transformers checks
    (a draft with another tokenizer needs its universal assisted generation, not benchmarked here)."""
    sizes = [m.config.get_text_config().vocab_size for m in (model, draft)]
    if sizes[0] != sizes[1]:
        raise ConfigError(
            f"draft model {draft_ref!r} has a vocabulary of {sizes[1]} tokens, the target {sizes[0]}: "
            "assisted generation needs a draft that shares the target's tokenizer"
        )


def _engine(config: SwiftConfig, mode: str) -> Callable[[MethodContext], Method]:
    return lambda ctx: EngineMethod(ctx, config, mode)


_BUILTIN: tuple[MethodSpec, ...] = (
    MethodSpec("ar", "this engine, plain autoregressive decoding", _engine(SwiftConfig(optimize=False), "ar")),
    # SwiftConfig() is built when the method is, so `swift` follows the engine's current default.
    MethodSpec(
        "swift", "this engine, SWIFT with the default SwiftConfig", lambda ctx: EngineMethod(ctx, SwiftConfig(), "swift")
    ),
    MethodSpec(
        "hybrid",
        "this engine, n-gram, recycling and layer-skip drafts in one tree (the engine's default method)",
        lambda ctx: EngineMethod(ctx, SwiftConfig(), "hybrid"),
    ),
    MethodSpec("ngram", "this engine, prompt lookup (n-gram) drafts", lambda ctx: EngineMethod(ctx, SwiftConfig(), "ngram")),
    MethodSpec("recycle", "this engine, token recycling drafts", lambda ctx: EngineMethod(ctx, SwiftConfig(), "recycle")),
    MethodSpec(
        "swift-start",
        "this engine, SWIFT with the starting skip set (every other inner layer), no optimization",
        _engine(SwiftConfig(optimize=False), "swift"),
    ),
    MethodSpec(
        "swift-paper",
        "this engine, SWIFT's own on-the-fly search (matchness at skip ratio 0.45, random + Bayesian proposals), "
        "cold start, nothing saved",
        _engine(SwiftConfig(search=SearchConfig(objective="paper", persist=False)), "swift"),
    ),
    MethodSpec(
        "swift-speed",
        "this engine, the speed objective (measured tokens/s, plain decoding a candidate), cold start, nothing saved",
        _engine(SwiftConfig(search=SearchConfig(persist=False)), "swift"),
    ),
    MethodSpec("hf", "transformers generate", lambda ctx: HFMethod(ctx), sharded=False),
    MethodSpec(
        "hf-pld",
        f"transformers prompt lookup decoding (prompt_lookup_num_tokens={PLD_NUM_TOKENS})",
        lambda ctx: HFMethod(ctx, prompt_lookup_num_tokens=PLD_NUM_TOKENS),
        sharded=False,
    ),
    MethodSpec(
        "hf-assisted",
        "transformers assisted generation with the draft model of --draft-model (transformers' default schedule)",
        _assisted,
        needs_draft=True,
        sharded=False,
    ),
)

#: Every built-in method by name. Read-only: the registry is code, not state.
METHODS: Mapping[str, MethodSpec] = MappingProxyType({m.name: m for m in _BUILTIN})


def resolve_methods(names: Sequence[str], registry: Mapping[str, MethodSpec] = METHODS) -> list[MethodSpec]:
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; known: {', '.join(registry)}")
    return [registry[n] for n in names]


def check_sharded(specs: Sequence[MethodSpec]) -> None:
    """Raise unless every method can run on a tensor-parallel model."""
    refused = [s.name for s in specs if not s.sharded]
    if refused:
        raise ConfigError(
            f"{', '.join(refused)} cannot run with tensor parallelism: transformers' generate on a sharded model "
            "would need every rank to call it, and only rank 0 runs the bench"
        )
