"""The benchmark loop: load once, warm up each method, then time every method on every prompt.

Methods are interleaved per prompt (prompt-major: prompt 1 with every method, then prompt 2, ...),
so slow drifts of a shared machine (another process, thermal throttling) hit all methods alike and
their ratios stay meaningful even when absolute numbers move.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .environment import environment, load_average
from .methods import METHODS, Method, MethodContext, MethodSpec, resolve_methods
from .metrics import mark_identical, median, summarize
from .records import BenchConfig, GenSettings, Outcome, PromptRecord
from .result import BenchResult
from .suites import Prompt, load_suites
from .timing import timed


@dataclass(frozen=True)
class EncodedPrompt:
    prompt: Prompt
    ids: tuple[int, ...]


def encode_all(tokenizer, prompts: Sequence[Prompt]) -> list[EncodedPrompt]:
    """Token ids per prompt: chat-templated when the suite asks for it and the tokenizer has one."""
    from ..prompts import encode_prompt

    has_template = bool(getattr(tokenizer, "chat_template", None))
    return [EncodedPrompt(p, tuple(encode_prompt(tokenizer, p.text, p.chat and has_template))) for p in prompts]


def make_record(p: EncodedPrompt, method: str, outcome: Outcome, times: Sequence[float]) -> PromptRecord:
    s = outcome.stats
    return PromptRecord(
        prompt_id=p.prompt.prompt_id,
        category=p.prompt.category,
        method=method,
        prompt_tokens=len(p.ids),
        new_tokens=len(outcome.tokens),
        time_s=median(times),
        times=tuple(times),
        tokens=outcome.tokens,
        verify_steps=s.get("verify_steps"),
        mean_accepted=s.get("mean_accepted"),
        accepted_tokens=s.get("accepted_tokens"),
        drafted_tokens=s.get("drafted_tokens"),
        accepted_per_step=tuple(s.get("accepted_per_step", ())),
        draft_time=s.get("draft_time"),
        verify_time=s.get("verify_time"),
        optimize_time=s.get("optimize_time"),
        skip_attn=tuple(s.get("skip_attn", ())),
        skip_mlp=tuple(s.get("skip_mlp", ())),
    )


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator:
    """A tqdm bar on stderr, or a no-op one when disabled or tqdm is missing."""
    bar = None
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            bar = tqdm(total=total, file=sys.stderr, unit="gen", dynamic_ncols=True)

    class _Bar:
        def step(self, label: str) -> None:
            if bar is not None:
                bar.set_postfix_str(label, refresh=False)
                bar.update(1)

    try:
        yield _Bar()
    finally:
        if bar is not None:
            bar.close()


def measure(
    methods: Mapping[str, Method],
    prompts: Sequence[EncodedPrompt],
    settings: GenSettings,
    *,
    repeats: int = 1,
    warmup_tokens: int = 16,
    device: torch.device | None = None,
    progress: bool = False,
) -> list[PromptRecord]:
    """Warm up each method once, then time each on each prompt `repeats` times (median kept).

    The tokens and statistics of a record come from its first repeat: greedy (and seeded
    sampling) repeats produce the same tokens, and the first run is the one an on-the-fly
    optimizer saw fresh.
    """
    device = device or torch.device("cpu")
    total = len(methods) * (len(prompts) * repeats + (1 if warmup_tokens else 0))
    records = []
    with _progress(total, progress) as bar:
        if warmup_tokens and prompts:
            warm = replace(settings, max_new_tokens=min(warmup_tokens, settings.max_new_tokens))
            for name, method in methods.items():
                method.generate(prompts[0].ids, warm)
                bar.step(f"warm-up {name}")
        for p in prompts:
            runs: dict[str, tuple[Outcome, list[float]]] = {}
            for _ in range(repeats):
                for name, method in methods.items():
                    outcome, seconds = timed(device, method.generate, p.ids, settings)
                    runs.setdefault(name, (outcome, []))[1].append(seconds)
                    bar.step(f"{p.prompt.prompt_id} {name} {len(outcome.tokens) / seconds:.1f} tok/s")
            records += [make_record(p, name, outcome, times) for name, (outcome, times) in runs.items()]
    return mark_identical(records)


def run_bench(config: BenchConfig, registry: Mapping[str, MethodSpec] = METHODS) -> BenchResult:
    """Load the model, run every method on every prompt, write the outputs to `config.out`."""
    from ..engine.stops import tokenizer_stop_token_ids
    from ..loading import load
    from .report import write_outputs

    specs = resolve_methods(config.methods, registry)  # Fail on a typo before loading anything.
    prompts = load_suites(config.suites, config.limit, categories=config.categories)
    if config.threads:
        torch.set_num_threads(config.threads)
    model, tokenizer = load(config.model, device=config.device, dtype=config.dtype)
    device = next(model.parameters()).device
    env = environment(config.model, model, device, config.command)
    ctx = MethodContext(model, tokenizer, tuple(tokenizer_stop_token_ids(tokenizer, model)))
    env["stop_ids"] = list(ctx.stop_ids)
    methods = {s.name: s.factory(ctx) for s in specs}
    records = measure(
        methods, encode_all(tokenizer, prompts), config.settings, repeats=config.repeats,
        warmup_tokens=config.warmup_tokens, device=device, progress=config.progress,
    )  # fmt: skip
    env["load_average_end"] = load_average()
    result = BenchResult(config, env, tuple(records), summarize(records))
    write_outputs(result, Path(config.out))
    return result
