"""The benchmark loop: load once, warm up each method, then time every method on every prompt.

Warm-up first readies each method for the run's longest context (`prepare`: cache, CUDA graphs),
then runs one short generation, so timed requests measure steady speed and the cold start is
reported on its own. Methods are interleaved per prompt (prompt-major: prompt 1 with every
method, then prompt 2, ...), so slow drifts of a shared machine (another process, thermal
throttling) hit all methods alike and their ratios stay meaningful even when absolute numbers move.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import ConfigError
from .environment import environment, load_average
from .methods import METHODS, Method, MethodContext, MethodSpec, check_draft, check_sharded, resolve_methods
from .metrics import mark_identical, median, summarize, token_latencies
from .records import BenchConfig, GenSettings, Outcome, PromptRecord, WarmUp
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


@dataclass(frozen=True)
class Measurement:
    """What `measure` found: one record per (prompt, method), and each method's warm-up cost."""

    records: list[PromptRecord]
    warmups: dict[str, WarmUp]


def make_record(p: EncodedPrompt, method: str, outcomes: Sequence[Outcome], times: Sequence[float]) -> PromptRecord:
    """One record from a method's repeats on a prompt: tokens and statistics from the first,
    times, latencies and graph captures from all."""
    s = outcomes[0].stats
    latencies = [token_latencies(o.arrivals, len(o.tokens)) for o in outcomes]
    captures = [o.stats["graph_captures"] for o in outcomes if "graph_captures" in o.stats]
    return PromptRecord(
        prompt_id=p.prompt.prompt_id,
        category=p.prompt.category,
        method=method,
        prompt_tokens=len(p.ids),
        new_tokens=len(outcomes[0].tokens),
        time_s=median(times),
        times=tuple(times),
        tokens=outcomes[0].tokens,
        verify_steps=s.get("verify_steps"),
        drafting_steps=s.get("drafting_steps"),
        mean_accepted=s.get("mean_accepted"),
        accepted_tokens=s.get("accepted_tokens"),
        drafted_tokens=s.get("drafted_tokens"),
        accepted_per_step=tuple(s.get("accepted_per_step", ())),
        draft_time=s.get("draft_time"),
        verify_time=s.get("verify_time"),
        optimize_time=s.get("optimize_time"),
        skip_attn=tuple(s.get("skip_attn", ())),
        skip_mlp=tuple(s.get("skip_mlp", ())),
        mean_tree_nodes=s.get("mean_tree_nodes"),
        host_share=s.get("host_share"),
        drafted_by_source=dict(s.get("drafted_by_source", {})),
        accepted_by_source=dict(s.get("accepted_by_source", {})),
        graph_captures=sum(captures) if captures else None,
        ttft_s=tuple(t for t, _ in latencies if t is not None),
        itl_s=tuple(g for _, gaps in latencies for g in gaps),
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


def max_context(prompts: Sequence[EncodedPrompt], settings: GenSettings) -> int:
    """The longest context a request of the run can reach."""
    return max((len(p.ids) for p in prompts), default=1) + settings.max_new_tokens


def warm_up(
    method: Method, prompts: Sequence[EncodedPrompt], settings: GenSettings, warmup_tokens: int, device: torch.device
) -> WarmUp:
    """`prepare` (when the method has it), then one short untimed generation (when warmup_tokens > 0)."""
    prepare_s = generate_s = captures = None
    if hasattr(method, "prepare") and prompts:
        _, prepare_s = timed(device, method.prepare, max_context(prompts, settings), settings)
    if warmup_tokens and prompts:
        warm = replace(settings, max_new_tokens=min(warmup_tokens, settings.max_new_tokens))
        outcome, generate_s = timed(device, method.generate, prompts[0].ids, warm)
        captures = outcome.stats.get("graph_captures")
    return WarmUp(prepare_s, generate_s, captures)


def measure(
    methods: Mapping[str, Method],
    prompts: Sequence[EncodedPrompt],
    settings: GenSettings,
    *,
    repeats: int = 1,
    warmup_tokens: int = 16,
    device: torch.device | None = None,
    progress: bool = False,
) -> Measurement:
    """Warm up each method once, then time each on each prompt `repeats` times (median kept).

    The tokens and statistics of a record come from its first repeat: greedy (and seeded
    sampling) repeats produce the same tokens, and the first run is the one an on-the-fly
    optimizer saw fresh. Latencies and graph captures come from every repeat.
    """
    device = device or torch.device("cpu")
    total = len(methods) * (len(prompts) * repeats + 1)
    records = []
    with _progress(total, progress) as bar:
        warmups = {}
        for name, method in methods.items():
            warmups[name] = warm_up(method, prompts, settings, warmup_tokens, device)
            bar.step(f"warm-up {name}")
        for p in prompts:
            runs: dict[str, tuple[list[Outcome], list[float]]] = {}
            for _ in range(repeats):
                for name, method in methods.items():
                    outcome, seconds = timed(device, method.generate, p.ids, settings)
                    outcomes, times = runs.setdefault(name, ([], []))
                    outcomes.append(outcome)
                    times.append(seconds)
                    bar.step(f"{p.prompt.prompt_id} {name} {len(outcome.tokens) / seconds:.1f} tok/s")
            records += [make_record(p, name, outcomes, times) for name, (outcomes, times) in runs.items()]
    return Measurement(mark_identical(records), warmups)


def load_draft(config: BenchConfig, model: torch.nn.Module) -> torch.nn.Module:
    """The draft model on the target's device and in its dtype, checked against the target."""
    from ..loading import load

    param = next(model.parameters())
    draft, _ = load(config.draft_model, device=str(param.device), dtype=param.dtype)
    check_draft(model, draft, config.draft_model)
    return draft


def run_bench(config: BenchConfig, registry: Mapping[str, MethodSpec] = METHODS) -> BenchResult | None:
    """Load the model, run every method on every prompt, write the outputs to `config.out`.
    None on a tensor-parallel rank other than 0 (it ran rank 0's steps)."""
    from .. import parallel
    from ..loading import load

    specs = resolve_methods(config.methods, registry)  # Fail on a typo before loading anything.
    needs_draft = [s.name for s in specs if s.needs_draft]
    if needs_draft and not config.draft_model:
        raise ConfigError(f"{', '.join(needs_draft)} needs a draft model: pass --draft-model (BenchConfig.draft_model)")
    if config.tensor_parallel:
        check_sharded(specs)
    prompts = load_suites(config.suites, config.limit, categories=config.categories)
    if config.threads:
        torch.set_num_threads(config.threads)
    model, tokenizer = load(config.model, device=config.device, dtype=config.dtype, tensor_parallel=config.tensor_parallel)
    # Under tensor parallelism rank 0 runs the bench; the other ranks run its steps and return None.
    return parallel.run(model, lambda: _run_loaded(config, specs, prompts, model, tokenizer))


def _run_loaded(config: BenchConfig, specs: Sequence[MethodSpec], prompts, model, tokenizer) -> BenchResult:
    from ..engine.stops import tokenizer_stop_token_ids
    from ..parallel import sharding_of
    from .report import write_outputs

    device = next(model.parameters()).device
    env = environment(config.model, model, device, config.command)
    sharding = sharding_of(model)
    env["tensor_parallel"] = sharding.world_size if sharding is not None else 1
    draft = load_draft(config, model) if any(s.needs_draft for s in specs) else None
    if draft is not None:
        env["draft_model"] = config.draft_model
        env["draft_parameters"] = sum(p.numel() for p in draft.parameters())
    ctx = MethodContext(model, tokenizer, tuple(tokenizer_stop_token_ids(tokenizer, model)), draft, config.device_drafting)
    env["stop_ids"] = list(ctx.stop_ids)
    methods = {s.name: s.factory(ctx) for s in specs}
    encoded = encode_all(tokenizer, prompts)
    env["max_context"] = max_context(encoded, config.settings)
    m = measure(
        methods, encoded, config.settings, repeats=config.repeats,
        warmup_tokens=config.warmup_tokens, device=device, progress=config.progress,
    )  # fmt: skip
    env["load_average_end"] = load_average()
    result = BenchResult(config, env, tuple(m.records), summarize(m.records), m.warmups)
    write_outputs(result, Path(config.out))
    return result
