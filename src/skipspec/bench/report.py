"""Writing a benchmark's results: results.json, report.md and the plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from .metrics import OVERALL, Summary
from .plots import planned_plots, write_plots
from .records import WarmUp
from .result import BenchResult

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
        "warmups": {m: {**asdict(w), "total_s": w.total_s} for m, w in result.warmups.items()},
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
        "| method | tokens/s | speedup vs ar | speedup vs hf | decode speedup vs ar | mean accepted | acceptance "
        "| identical to ar | new tokens | time (s) |"
    )
    lines = [head, "|---|" + "---:|" * 9]
    for method, by_cat in summary.items():
        s = by_cat[OVERALL]
        lines.append(
            f"| {method} | {s.tokens_per_s:.2f} | {_fmt(s.speedup_vs_ar, '.2f', 'x')} | "
            f"{_fmt(s.speedup_vs_hf, '.2f', 'x')} | {_fmt(s.decode_speedup_vs_ar, '.2f', 'x')} | "
            f"{_fmt(s.mean_accepted)} | {_pct(s.acceptance_rate)} | "
            f"{_pct(s.identical_to_ar)} | {s.new_tokens} | {s.time_s:.1f} |"
        )
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return _fmt(None if seconds is None else seconds * 1000, ".1f")


def _sources(s: Summary) -> str:
    """'ngram 12/40, recycle 3/20': accepted / drafted tokens per drafter."""
    drafted, accepted = s.drafted_by_source or {}, s.accepted_by_source or {}
    return ", ".join(f"{k} {accepted.get(k, 0)}/{n}" for k, n in drafted.items()) or "–"


def drafting_table(summary: Mapping[str, Mapping[str, Summary]]) -> str:
    """Per method over all prompts: speed and what its drafting did."""
    head = (
        "| method | tokens/s | speedup vs ar | mean accepted | mean tree nodes | host share | drafted on the device "
        "| accepted / drafted by source |"
    )
    lines = [head, "|---|" + "---:|" * 6 + "---|"]
    for method, by_cat in summary.items():
        s = by_cat[OVERALL]
        lines.append(
            f"| {method} | {s.tokens_per_s:.2f} | {_fmt(s.speedup_vs_ar, '.2f', 'x')} | {_fmt(s.mean_accepted)} | "
            f"{_fmt(s.mean_tree_nodes, '.1f')} | {_pct(s.host_share)} | {_pct(s.drafting_share)} | {_sources(s)} |"
        )
    return "\n".join(lines)


def latency_table(summary: Mapping[str, Mapping[str, Summary]]) -> str:
    """Per method over all prompts and repeats: TTFT and ITL percentiles, and the longest ITL, in milliseconds."""
    header = "| method | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) | ITL max (ms) |"
    lines = [header, "|---|" + "---:|" * 5]
    for method, by_cat in summary.items():
        s = by_cat[OVERALL]
        cells = (s.ttft_p50, s.ttft_p99, s.itl_p50, s.itl_p99, s.itl_max)
        lines.append(f"| {method} | " + " | ".join(_ms(v) for v in cells) + " |")
    return "\n".join(lines)


def cold_start_table(summary: Mapping[str, Mapping[str, Summary]], warmups: Mapping[str, WarmUp]) -> str:
    """Per method: what warming up cost, and graphs captured after it (0 = the timing saw steady speed)."""
    head = (
        "| method | prepare (s) | warm-up generation (s) | warm-up total (s) | graph captures in warm-up "
        "| graph captures during timing |"
    )
    lines = [head, "|---|" + "---:|" * 5]
    for method, by_cat in summary.items():
        w = warmups.get(method, WarmUp())
        lines.append(
            f"| {method} | {_fmt(w.prepare_s)} | {_fmt(w.generate_s)} | {_fmt(w.total_s)} | "
            f"{_fmt(w.graph_captures, 'd')} | {_fmt(by_cat[OVERALL].graph_captures, 'd')} |"
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
        f"{cfg.repeats} timed repeat(s) per prompt (median), methods interleaved per prompt; before timing, each "
        f"method readies itself for the longest context ({env.get('max_context', '?')} tokens) where it can, then "
        f"runs one short warm-up generation ({cfg.warmup_tokens} tokens)",
        f"- torch {env['torch']}, transformers {env['transformers']}, skipspec {env['skipspec']}; "
        f"{env['date']}; load average {env.get('load_average_start')} -> {env.get('load_average_end')}",
        *([f"- draft model (hf-assisted): `{env['draft_model']}`"] if env.get("draft_model") else []),
        f"- command: `{env['command']}`",
        "",
        "## Overall",
        "",
        overall_table(summary),
        "",
        "## Drafting per method",
        "",
        "Mean tree nodes: draft nodes verified per step. Host share: host time drafting (proposing, merging, "
        "learning from each result) over drafting + verifying. Drafted on the device: verify steps whose tree "
        "was drafted inside the captured step (drafting steps, on a GPU). Accepted / drafted by source: draft "
        "tokens per drafter, over the first repeat of each prompt.",
        "",
        drafting_table(summary),
        "",
        "## Latency per method",
        "",
        "Time to first token (TTFT): from the call to the first new token, prefill included. Inter-token latency "
        "(ITL): for every later token, the wait since the previous chunk of tokens reached the caller; a speculative "
        "step hands out several tokens at once, so its first token carries the step's gap and the others count 0 "
        "(its p50 can be 0 when most tokens come in multi-token chunks). Percentiles over every prompt and repeat; "
        "the longest wait shows a one-off stall that the p99 hides.",
        "",
        latency_table(summary),
        "",
        "## Cold start and steady state",
        "",
        "Prepare: cache and CUDA graphs sized for the longest context, when the method can. Timed runs should "
        "capture no graphs: captures during timing mean some requests paid a one-off cost.",
        "",
        cold_start_table(summary, result.warmups),
        "",
        "## Speedup vs ar (this engine, plain decoding) per category",
        "",
        metric_table(summary, "speedup_vs_ar", lambda v: _fmt(v, ".2f", "x")),
        "",
        "## Decode speedup vs ar per category",
        "",
        "Tokens after the first over the time after the first token, against `ar`'s: the prefill (the same "
        "forward for every method) left out: on a long prompt with a short answer the prefill is most of a "
        "request.",
        "",
        metric_table(summary, "decode_speedup_vs_ar", lambda v: _fmt(v, ".2f", "x")),
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
