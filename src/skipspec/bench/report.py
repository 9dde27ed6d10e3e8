"""Writing a benchmark's results: results.json, report.md and the plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .metrics import OVERALL, Summary
from .plots import planned_plots, write_plots

if TYPE_CHECKING:
    from .runner import BenchResult

RESULTS_JSON = "results.json"
REPORT_MD = "report.md"


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _count(n: int) -> str:
    """2.3e5 -> '0.23M', 1.35e8 -> '135M', 1.54e9 -> '1.54B'."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.3g}M"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def results_dict(result: BenchResult) -> dict:
    return {
        "environment": result.environment,
        "config": result.config.to_dict(),
        "summary": {m: {c: asdict(s) for c, s in cats.items()} for m, cats in result.summary.items()},
        "records": [r.to_dict() for r in result.records],
    }


def metric_table(summary: Mapping[str, Mapping[str, Summary]], field: str, fmt) -> str:
    """Methods as rows, categories (then `overall`) as columns, one metric in the cells."""
    cats = [c for c in next(iter(summary.values())) if c != OVERALL] + [OVERALL]
    lines = ["| method | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
    for method, by_cat in summary.items():
        cells = [fmt(getattr(by_cat[c], field)) if c in by_cat else "–" for c in cats]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overall_table(summary: Mapping[str, Mapping[str, Summary]]) -> str:
    """One row per method over all prompts."""
    head = (
        "| method | tokens/s | speedup vs ar | speedup vs hf | mean accepted | acceptance | identical to ar "
        "| new tokens | time (s) |"
    )
    lines = [head, "|---|" + "---:|" * 8]
    for method, by_cat in summary.items():
        s = by_cat[OVERALL]
        lines.append(
            f"| {method} | {s.tokens_per_s:.2f} | {_fmt(s.speedup_vs_ar, '.2f', 'x')} | "
            f"{_fmt(s.speedup_vs_hf, '.2f', 'x')} | {_fmt(s.mean_accepted)} | {_pct(s.acceptance_rate)} | "
            f"{_pct(s.identical_to_ar)} | {s.new_tokens} | {s.time_s:.1f} |"
        )
    return "\n".join(lines)


def markdown_report(result: BenchResult, plots: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    """The report; `notes`: one line per plot not drawn, saying why."""
    env, cfg, summary = result.environment, result.config, result.summary
    settings = cfg.settings
    decoding = "greedy" if not settings.do_sample else f"sampling, temperature {settings.temperature}"
    prompts = len({r.prompt_id for r in result.records})
    parts = [
        f"# Benchmark: {env['model']}",
        "",
        f"- model: `{env['model']}` ({env['model_class']}, {env['num_layers']} layers, "
        f"{_count(env['parameters'])} parameters), {env['dtype']} on {env['device']}"
        + (f" ({env['gpu']})" if env.get("gpu") else f" ({env['cpu']}, {_plural(env['threads'], 'thread')})"),
        f"- suites: {', '.join(cfg.suites)}; {prompts} prompts"
        + (f" (first {cfg.limit} per category)" if cfg.limit else "")
        + (f"; categories {', '.join(cfg.categories)}" if cfg.categories else ""),
        f"- {decoding}, max {settings.max_new_tokens} new tokens, seed {settings.seed}, "
        f"{cfg.repeats} timed repeat(s) per prompt (median), one warm-up per method, methods interleaved per prompt",
        f"- torch {env['torch']}, transformers {env['transformers']}, skipspec {env['skipspec']}; "
        f"{env['date']}; load average {env.get('load_average_start')} -> {env.get('load_average_end')}",
        f"- command: `{env['command']}`",
        "",
        "## Overall",
        "",
        overall_table(summary),
        "",
        "## Speedup vs ar (this engine, plain decoding) per category",
        "",
        metric_table(summary, "speedup_vs_ar", lambda v: _fmt(v, ".2f", "x")),
        "",
        "## Speedup vs hf (transformers generate) per category",
        "",
        metric_table(summary, "speedup_vs_hf", lambda v: _fmt(v, ".2f", "x")),
        "",
        "## Tokens/s per category",
        "",
        metric_table(summary, "tokens_per_s", _fmt),
        "",
        "## Mean accepted tokens per verify step (bonus included) per category",
        "",
        metric_table(summary, "mean_accepted", _fmt),
        "",
        "## Output identical to ar per category",
        "",
        metric_table(summary, "identical_to_ar", _pct),
        "",
    ]
    parts += [f"![{Path(p).stem}]({Path(p).name})\n" for p in plots]
    parts += [f"- {note}" for note in notes]
    return "\n".join(parts)


def write_outputs(result: BenchResult, out: Path) -> list[Path]:
    """results.json, report.md and (when enabled) PNG plots in `out`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / RESULTS_JSON]
    written[0].write_text(json.dumps(results_dict(result), indent=1) + "\n", encoding="utf-8")
    plots = write_plots(result, out) if result.config.plots else []
    notes = [f"no {name}: {why}" for name, why in planned_plots(result).items() if why is not None]
    report = out / REPORT_MD
    report.write_text(markdown_report(result, [str(p) for p in plots], notes), encoding="utf-8")
    return written + [report] + plots
