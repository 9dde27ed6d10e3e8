"""PNG plots of a benchmark (matplotlib imported here only, with the non-interactive Agg backend)."""

from __future__ import annotations

from pathlib import Path

from .metrics import OVERALL, accepted_histogram, group
from .result import BenchResult

SPEEDUP_PNG = "speedup.png"
ACCEPTED_PNG = "accepted_per_step.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # No display: render to files only.
    import matplotlib.pyplot as plt

    return plt


def _title(result: BenchResult) -> str:
    env = result.environment
    return f"{Path(env['model']).name} · {env['dtype']} · {env['device']}"


def plot_speedup(result: BenchResult, path: Path) -> Path:
    """Grouped bars: speedup vs ar per category (and overall), one bar per method."""
    plt = _pyplot()
    summary = result.summary
    cats = [c for c in next(iter(summary.values())) if c != OVERALL] + [OVERALL]
    methods = [m for m in summary if m != "ar"] or list(summary)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cats) + 2), 3.6), dpi=100)
    for i, m in enumerate(methods):
        values = [(summary[m][c].speedup_vs_ar or 0.0) if c in summary[m] else 0.0 for c in cats]
        ax.bar([x + (i - (len(methods) - 1) / 2) * width for x in range(len(cats))], values, width, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(cats)), cats, rotation=20, ha="right")
    ax.set_ylabel("speedup vs ar (tokens/s ratio)")
    ax.set_title(_title(result), fontsize=9)
    ax.legend(fontsize=8, ncol=min(4, len(methods)))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _accepted_histograms(result: BenchResult) -> dict[str, dict[int, float]]:
    by_method = {m: cats[OVERALL] for m, cats in group(result.records).items()}
    return {m: accepted_histogram(rs) for m, rs in by_method.items() if any(r.drafted_tokens for r in rs)}


def planned_plots(result: BenchResult) -> dict[str, str | None]:
    """Each plot's file name -> None when `write_plots` writes it, else one line saying why not."""
    if not result.config.plots:
        return {SPEEDUP_PNG: "plots are off (--no-plots)", ACCEPTED_PNG: "plots are off (--no-plots)"}
    methods = ", ".join(result.summary)
    return {
        SPEEDUP_PNG: None,
        ACCEPTED_PNG: None
        if _accepted_histograms(result)
        else f"no method of this run drafts tokens ({methods}), so there is no acceptance to plot",
    }


def plot_accepted(result: BenchResult, path: Path) -> Path | None:
    """Share of verify steps accepting k draft tokens, per method that drafts (None if none does)."""
    hists = _accepted_histograms(result)
    if not hists:
        return None
    plt = _pyplot()
    top = max(max(h) for h in hists.values())
    width = 0.8 / len(hists)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * top + 3), 3.4), dpi=100)
    for i, (m, h) in enumerate(hists.items()):
        ks = list(range(top + 1))
        ax.bar([k + (i - (len(hists) - 1) / 2) * width for k in ks], [h.get(k, 0.0) for k in ks], width, label=m)
    ax.set_xticks(range(top + 1))
    ax.set_xlabel("draft tokens accepted in a verify step (bonus token excluded)")
    ax.set_ylabel("share of verify steps")
    ax.set_title(_title(result), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(result: BenchResult, out: Path) -> list[Path]:
    paths = [plot_speedup(result, out / SPEEDUP_PNG), plot_accepted(result, out / ACCEPTED_PNG)]
    return [p for p in paths if p is not None]
