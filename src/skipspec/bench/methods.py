"""Decoding methods under test, by name: a read-only registry of name -> factory.

Every method is built once per run from the same model object, tokenizer and stop ids, and then
asked to generate for each prompt with the same `GenSettings`. To add one (an engine preset, say),
write a factory `(MethodContext) -> Method` and add a `MethodSpec` to `_BUILTIN` below; callers
of `skipspec.bench.run_bench` may also pass their own mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import torch

from ..config import SearchConfig, SwiftConfig
from ..errors import ConfigError
from .records import GenSettings, Outcome

#: Engine stats copied into a record (the rest are recomputed by the benchmark or not needed).
ENGINE_STAT_KEYS = (
    "verify_steps", "mean_accepted", "accepted_tokens", "drafted_tokens", "accepted_per_step",
    "draft_time", "verify_time", "optimize_time", "skip_attn", "skip_mlp",
)  # fmt: skip

#: transformers' prompt lookup: how many tokens to copy from the context per step.
PLD_NUM_TOKENS = 10


@dataclass(frozen=True)
class MethodContext:
    """What every method is built from: one model object shared by all methods of a run."""

    model: torch.nn.Module
    tokenizer: Any
    stop_ids: tuple[int, ...]


class Method(Protocol):
    def generate(self, ids: Sequence[int], settings: GenSettings) -> Outcome: ...


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    factory: Callable[[MethodContext], Method]


class EngineMethod:
    """This engine: `SwiftDecoder.generate` with method "swift" or "ar".

    The decoder lives as long as the run, so a skip set chosen on one prompt carries over to the
    next, as it does for a long-lived decoder in real use.
    """

    def __init__(self, ctx: MethodContext, config: SwiftConfig, mode: str) -> None:
        from ..engine import SwiftDecoder

        self.decoder = SwiftDecoder(ctx.model, config, stop_token_ids=ctx.stop_ids)
        self.mode = mode

    def generate(self, ids: Sequence[int], settings: GenSettings) -> Outcome:
        res = self.decoder.generate(
            list(ids), settings.max_new_tokens, method=self.mode,
            do_sample=settings.do_sample, temperature=settings.temperature or 1.0, seed=settings.seed,
        )  # fmt: skip
        stats = {k: res.stats[k] for k in ENGINE_STAT_KEYS if k in res.stats}
        return Outcome(tuple(res.tokens), stats)


class HFMethod:
    """transformers' own `generate`, with everything that could differ from the engine pinned.

    An explicit GenerationConfig (top_k=0, top_p=1, no repetition penalty) so the model's saved
    generation defaults cannot change the decoding rule; an explicit all-ones attention mask; the
    same stop ids. Forwards are counted with a hook, so prompt lookup reports tokens per step.
    """

    def __init__(self, ctx: MethodContext, **extra: Any) -> None:
        self.model = ctx.model
        self.stop_ids = list(ctx.stop_ids)
        pad = getattr(ctx.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (self.stop_ids[0] if self.stop_ids else 0)
        self.extra = extra

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
        try:
            if settings.do_sample:
                torch.manual_seed(settings.seed)
            with torch.no_grad():
                out = self.model.generate(
                    input_ids, attention_mask=torch.ones_like(input_ids), generation_config=self._config(settings)
                )
        finally:
            hook.remove()
        tokens = tuple(int(t) for t in out[0, input_ids.shape[1] :].tolist())
        steps = forwards[0] - 1  # the first forward is the prefill, which yields the first token
        stats: dict = {"verify_steps": steps}
        if steps > 0:
            stats["mean_accepted"] = (len(tokens) - 1) / steps
        return Outcome(tokens, stats)


def _engine(config: SwiftConfig, mode: str) -> Callable[[MethodContext], Method]:
    return lambda ctx: EngineMethod(ctx, config, mode)


_BUILTIN: tuple[MethodSpec, ...] = (
    MethodSpec("ar", "this engine, plain autoregressive decoding", _engine(SwiftConfig(optimize=False), "ar")),
    # SwiftConfig() is built when the method is, so `swift` follows the engine's current default.
    MethodSpec(
        "swift", "this engine, SWIFT with the default SwiftConfig", lambda ctx: EngineMethod(ctx, SwiftConfig(), "swift")
    ),
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
    MethodSpec("hf", "transformers generate", lambda ctx: HFMethod(ctx)),
    MethodSpec(
        "hf-pld",
        f"transformers prompt lookup decoding (prompt_lookup_num_tokens={PLD_NUM_TOKENS})",
        lambda ctx: HFMethod(ctx, prompt_lookup_num_tokens=PLD_NUM_TOKENS),
    ),
)

#: Every built-in method by name. Read-only: the registry is code, not state.
METHODS: Mapping[str, MethodSpec] = MappingProxyType({m.name: m for m in _BUILTIN})


def resolve_methods(names: Sequence[str], registry: Mapping[str, MethodSpec] = METHODS) -> list[MethodSpec]:
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; known: {', '.join(registry)}")
    return [registry[n] for n in names]
