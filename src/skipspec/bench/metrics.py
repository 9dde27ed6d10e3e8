"""Benchmark arithmetic, Spec-Bench style, as pure functions over `PromptRecord`s.

Conventions (as Spec-Bench's own speed script):
- tokens/s of a method in a category = total new tokens / total time over its prompts (not a mean
  of per-prompt rates, which would overweight short answers);
- speedup = that rate divided by the baseline method's rate on the same prompts;
- decode tokens/s = the tokens after the first over the time after the first token: the part of a
  request that speculative decoding speeds up (the prefill is the same forward for every method,
  and on a long prompt it can be most of a short answer's time);
- mean accepted (tau) = tokens per verify step, bonus token included, weighted by steps;
- acceptance rate = accepted draft tokens / drafted tokens.

Latency (per request, from when each chunk of new tokens reached the caller):
- time to first token (TTFT) = arrival of the first chunk - start of the call (prefill included);
- inter-token latency (ITL) = per token after the first: the gap since the previous chunk for the
  first token of a chunk, 0 for the other tokens of a multi-token chunk (they arrive together);
- p50 / p99 pool every request's (and repeat's) values of a method, linearly interpolated.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from .records import PromptRecord

OVERALL = "overall"


@dataclass(frozen=True)
class Summary:
    """One method over one category (or `overall`); None where a metric cannot be computed."""

    prompts: int
    new_tokens: int
    time_s: float
    tokens_per_s: float
    speedup_vs_ar: float | None
    speedup_vs_hf: float | None
    mean_accepted: float | None
    acceptance_rate: float | None
    identical_to_ar: float | None
    mean_tree_nodes: float | None = None
    host_share: float | None = None
    drafting_share: float | None = None  # verify steps whose tree was drafted on the device
    drafted_by_source: Mapping[str, int] | None = None
    accepted_by_source: Mapping[str, int] | None = None
    graph_captures: int | None = None  # captured during the timed runs
    ttft_p50: float | None = None
    ttft_p99: float | None = None
    itl_p50: float | None = None
    itl_p99: float | None = None
    itl_max: float | None = None  # the longest single wait: a stall p99 hides
    decode_tokens_per_s: float | None = None
    decode_speedup_vs_ar: float | None = None


def tokens_per_s(records: Iterable[PromptRecord]) -> float:
    """Total new tokens over total time.

    >>> r = lambda n, t: PromptRecord("p", "c", "m", 1, n, t, (t,), ())
    >>> tokens_per_s([r(10, 1.0), r(30, 1.0)])
    20.0
    """
    records = list(records)
    time = sum(r.time_s for r in records)
    return sum(r.new_tokens for r in records) / time if time > 0 else 0.0


def decode_tokens_per_s(records: Iterable[PromptRecord]) -> float | None:
    """Tokens after the first over the time after the first token, totals over the records that
    timed their first token (the median TTFT of a record's repeats); None when none did.

    >>> r = lambda n, t, ttft: PromptRecord("p", "c", "m", 1, n, t, (t,), (), ttft_s=(ttft,))
    >>> decode_tokens_per_s([r(11, 3.0, 1.0), r(31, 4.0, 1.0)])
    8.0
    >>> decode_tokens_per_s([PromptRecord("p", "c", "m", 1, 5, 1.0, (1.0,), ())]) is None
    True
    """
    timed = [r for r in records if r.ttft_s]
    time = sum(r.time_s - median(r.ttft_s) for r in timed)
    return sum(max(r.new_tokens - 1, 0) for r in timed) / time if timed and time > 0 else None


def mean_accepted(records: Iterable[PromptRecord]) -> float | None:
    """Tokens per verify step over all steps of the records that count steps (None if none do)."""
    counted = [r for r in records if r.verify_steps and r.mean_accepted is not None]
    steps = sum(r.verify_steps for r in counted)
    return sum(r.mean_accepted * r.verify_steps for r in counted) / steps if steps else None


def acceptance_rate(records: Iterable[PromptRecord]) -> float | None:
    """Accepted / drafted draft tokens (None when nothing was drafted, e.g. plain decoding)."""
    counted = [r for r in records if r.drafted_tokens is not None and r.accepted_tokens is not None]
    drafted = sum(r.drafted_tokens for r in counted)
    return sum(r.accepted_tokens for r in counted) / drafted if drafted else None


def mean_tree_nodes(records: Iterable[PromptRecord]) -> float | None:
    """Draft tree nodes per verify step, weighted by steps (None when no record counts nodes)."""
    counted = [r for r in records if r.verify_steps and r.mean_tree_nodes is not None]
    steps = sum(r.verify_steps for r in counted)
    return sum(r.mean_tree_nodes * r.verify_steps for r in counted) / steps if steps else None


def host_share(records: Iterable[PromptRecord]) -> float | None:
    """Host drafting time over drafting + verifying time, summed over the records that report it."""
    counted = [r for r in records if r.host_share is not None and r.draft_time is not None and r.verify_time is not None]
    total = sum(r.draft_time + r.verify_time for r in counted)
    return sum(r.draft_time for r in counted) / total if total > 0 else None


def drafting_share(records: Iterable[PromptRecord]) -> float | None:
    """Verify steps whose tree was drafted on the device, over all verify steps of the records
    that count both (None when none does).

    >>> r = lambda steps, device: PromptRecord("p", "c", "m", 1, 1, 1.0, (1.0,), (), steps, device)
    >>> drafting_share([r(10, 9), r(30, 30), r(None, None)])
    0.975
    """
    counted = [r for r in records if r.verify_steps is not None and r.drafting_steps is not None]
    steps = sum(r.verify_steps for r in counted)
    return sum(r.drafting_steps for r in counted) / steps if steps else None


def by_source(records: Iterable[PromptRecord], field: str) -> dict[str, int] | None:
    """`drafted_by_source` or `accepted_by_source` summed over records (None when none drafted).

    >>> r = lambda d: PromptRecord("p", "c", "m", 1, 1, 1.0, (1.0,), (), drafted_by_source=d)
    >>> by_source([r({"ngram": 3}), r({"ngram": 1, "recycle": 2})], "drafted_by_source")
    {'ngram': 4, 'recycle': 2}
    """
    total: Counter = Counter()
    for r in records:
        total.update(getattr(r, field))
    return dict(total) if total else None


def graph_captures(records: Iterable[PromptRecord]) -> int | None:
    counts = [r.graph_captures for r in records if r.graph_captures is not None]
    return sum(counts) if counts else None


def token_latencies(arrivals: Sequence[tuple[float, int]], new_tokens: int) -> tuple[float | None, list[float]]:
    """(TTFT, one inter-token gap per token after the first) from chunk arrivals.

    `arrivals` are (seconds since the call started, tokens in the chunk). A chunk's gap since the
    previous chunk goes to its first token; its other tokens arrived with it and get 0. Tokens a
    method streamed beyond its `new_tokens` (cut at a stop token afterwards) are dropped.

    >>> token_latencies([(0.5, 1), (0.75, 3), (1.0, 1)], 5)
    (0.5, [0.25, 0.0, 0.0, 0.25])
    >>> token_latencies([], 0)
    (None, [])
    """
    if not arrivals:
        return None, []
    gaps: list[float] = [0.0] * (arrivals[0][1] - 1)
    for (before, _), (t, n) in zip(arrivals, arrivals[1:]):
        gaps += [t - before] + [0.0] * (n - 1)
    return arrivals[0][0], gaps[: max(new_tokens - 1, 0)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linearly interpolated between order statistics (numpy's
    default); None for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile(range(101), 99), percentile([], 50)
    (2.5, 99.0, None)
    """
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_percentiles(records: Iterable[PromptRecord]) -> dict[str, float | None]:
    """TTFT and ITL p50 / p99, and the longest ITL, over every request and repeat of `records` (seconds)."""
    records = list(records)
    ttft = [t for r in records for t in r.ttft_s]
    itl = [g for r in records for g in r.itl_s]
    return {
        "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(itl, 50), "itl_p99": percentile(itl, 99), "itl_max": max(itl, default=None),
    }  # fmt: skip


def identical_fraction(records: Iterable[PromptRecord]) -> float | None:
    """Fraction of records whose output equals the reference's (None when none was compared)."""
    flags = [r.identical_to_ar for r in records if r.identical_to_ar is not None]
    return sum(flags) / len(flags) if flags else None


def speedup(rate: float | None, baseline: float | None) -> float | None:
    return rate / baseline if rate is not None and baseline else None


def mark_identical(records: Sequence[PromptRecord], reference: str = "ar") -> list[PromptRecord]:
    """Copies of `records` with `identical_to_ar` set against `reference`'s output per prompt.

    Records of prompts the reference did not run keep None.
    """
    ref = {r.prompt_id: r.tokens for r in records if r.method == reference}
    return [replace(r, identical_to_ar=(r.tokens == ref[r.prompt_id]) if r.prompt_id in ref else None) for r in records]


def categories(records: Iterable[PromptRecord]) -> list[str]:
    """Categories in order of first appearance."""
    return list(dict.fromkeys(r.category for r in records))


def group(records: Iterable[PromptRecord]) -> dict[str, dict[str, list[PromptRecord]]]:
    """method -> category (and `overall`) -> records; methods and categories in order of appearance."""
    out: dict[str, dict[str, list[PromptRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        out[r.method][r.category].append(r)
        out[r.method][OVERALL].append(r)
    return {m: dict(cats) for m, cats in out.items()}


def summarize(records: Sequence[PromptRecord]) -> dict[str, dict[str, Summary]]:
    """method -> category (plus `overall`) -> Summary. Speedups need an `ar` / `hf` run."""
    grouped = group(records)
    rates = {m: {c: tokens_per_s(rs) for c, rs in cats.items()} for m, cats in grouped.items()}
    decode = {m: {c: decode_tokens_per_s(rs) for c, rs in cats.items()} for m, cats in grouped.items()}
    return {
        m: {
            c: Summary(
                prompts=len(rs),
                new_tokens=sum(r.new_tokens for r in rs),
                time_s=sum(r.time_s for r in rs),
                tokens_per_s=rates[m][c],
                speedup_vs_ar=speedup(rates[m][c], rates.get("ar", {}).get(c)),
                speedup_vs_hf=speedup(rates[m][c], rates.get("hf", {}).get(c)),
                mean_accepted=mean_accepted(rs),
                acceptance_rate=acceptance_rate(rs),
                identical_to_ar=identical_fraction(rs),
                mean_tree_nodes=mean_tree_nodes(rs),
                host_share=host_share(rs),
                drafting_share=drafting_share(rs),
                drafted_by_source=by_source(rs, "drafted_by_source"),
                accepted_by_source=by_source(rs, "accepted_by_source"),
                graph_captures=graph_captures(rs),
                **latency_percentiles(rs),
                decode_tokens_per_s=decode[m][c],
                decode_speedup_vs_ar=speedup(decode[m][c], decode.get("ar", {}).get(c)),
            )
            for c, rs in cats.items()
        }
        for m, cats in grouped.items()
    }


def accepted_histogram(records: Iterable[PromptRecord]) -> Mapping[int, float]:
    """Share of verify steps that accepted k draft tokens, k -> fraction (bonus token excluded).

    >>> r = PromptRecord("p", "c", "m", 1, 4, 1.0, (1.0,), (), accepted_per_step=(0, 2, 0))
    >>> dict(accepted_histogram([r]))
    {0: 0.6666666666666666, 2: 0.3333333333333333}
    """
    counts = Counter(k for r in records for k in r.accepted_per_step)
    total = sum(counts.values())
    return {k: counts[k] / total for k in sorted(counts)} if total else {}


def median(values: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count).

    >>> median([3.0, 1.0, 2.0]), median([4.0, 1.0, 2.0, 3.0])
    (2.0, 2.5)
    """
    if not values:
        raise ValueError("median of no values")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
