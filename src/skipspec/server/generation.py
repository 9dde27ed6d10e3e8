"""One request on the worker thread: decode, detokenize, cut at stop strings, hand pieces over.

Runs on the scheduler's thread and reports through `emit` (a `Channel.put`): a `Piece` per decode
step, then one `Finished` or `Failed`. Streamed and non-streamed responses are assembled from the
same pieces, so their text is the same by construction. Metrics are recorded here rather than by
the request's coroutine, so a request whose client left is still counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..config import SamplingParams
from .backend import Backend, TokenLogprob
from .metrics import ServerMetrics
from .text import IncrementalDetokenizer, StopMatcher

log = logging.getLogger("skipspec.server")


@dataclass(frozen=True)
class Generation:
    """A validated, tokenized request. `arrival` is `time.monotonic()` when it came in."""

    prompt: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no log-probabilities
    arrival: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Piece:
    """The text one decode step completed ('' while a character or a possible stop string is unfinished)."""

    text: str
    tokens: int


@dataclass(frozen=True)
class Finished:
    text: str  # what was still held back at the end
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_tokens: int
    completion_tokens: int
    speculation: dict
    logprobs: tuple[TokenLogprob, ...] | None


@dataclass(frozen=True)
class Failed:
    error: Exception


def speculation_summary(stats: Mapping) -> dict:
    """The response's `skipspec` field from a stream's stats; keys an engine does not report read as 0.

    drafts: verify steps that checked a draft (a step with nothing drafted is a plain step).
    by_source: drafted and accepted tokens per drafter, for engines that report them.
    """
    per_step = stats.get("drafted_per_step")
    drafts = sum(1 for d in per_step if d) if per_step is not None else int(stats.get("drafts", 0))
    drafted_by = stats.get("drafted_by_source") or {}
    accepted_by = stats.get("accepted_by_source") or {}
    return {
        "method": stats.get("method"),
        "mean_accepted": float(stats.get("mean_accepted", 0.0)),
        "drafted_tokens": int(stats.get("drafted_tokens", 0)),
        "accepted_tokens": int(stats.get("accepted_tokens", 0)),
        "verify_steps": int(stats.get("verify_steps", 0)),
        "drafts": drafts,
        "by_source": {
            name: {"drafted_tokens": int(drafted_by.get(name, 0)), "accepted_tokens": int(accepted_by.get(name, 0))}
            for name in sorted({*drafted_by, *accepted_by})
        },
    }


def run_generation(
    backend: Backend,
    gen: Generation,
    emit: Callable[[object], None],
    cancelled: threading.Event,
    metrics: ServerMetrics,
) -> None:
    """Decode `gen` and report it through `emit`; never raises (a failure is reported as `Failed`)."""
    try:
        _run(backend, gen, emit, cancelled, metrics)
    except Exception as e:
        log.exception("generation failed")
        emit(Failed(e))


def _run(backend: Backend, gen: Generation, emit, cancelled: threading.Event, metrics: ServerMetrics) -> None:
    stream = backend.stream(gen.prompt, gen.max_tokens, gen.sampling)
    detok = IncrementalDetokenizer(backend)
    stops = StopMatcher(gen.stop)
    kept: list[int] = []
    held, held_tokens = "", 0
    last = None
    reason = None
    try:
        for token in stream:
            kept.append(token)
            piece, hit = stops.feed(detok.add(token))
            held += piece
            held_tokens += 1
            if hit:
                reason = "stop"
                break
            # The rest of this step's accepted tokens are already in: report the step as one piece.
            step_tokens = getattr(stream, "tokens", None)
            if step_tokens is not None and len(step_tokens) > len(kept):
                continue
            now = time.monotonic()
            if last is None:
                metrics.ttft.observe(now - gen.arrival)
            else:
                metrics.itl.observe(now - last)
            last = now
            emit(Piece(held, held_tokens))
            held, held_tokens = "", 0
            if cancelled.is_set():  # checked before the next step is computed: it never is
                reason = "abort"
                break
    finally:
        stream.close()
    if reason is None:
        piece, hit = stops.feed(detok.flush())
        held += piece
        if not hit:
            piece, hit = stops.flush()
            held += piece
        reason = "stop" if hit or (kept and kept[-1] in backend.stop_token_ids) else "length"
    speculation = speculation_summary(stream.result.stats)
    metrics.finished(e2e=time.monotonic() - gen.arrival, prompt_tokens=len(gen.prompt),
                     completion_tokens=len(kept), reason=reason, speculation=speculation)  # fmt: skip
    logprobs = None
    if gen.top_logprobs is not None and reason != "abort":
        # The end-of-turn token is not part of the text; OpenAI does not list it either.
        scored = kept[:-1] if kept and kept[-1] in backend.stop_token_ids else kept
        logprobs = tuple(backend.logprobs(gen.prompt, scored, gen.sampling, gen.top_logprobs))
    emit(Finished(held, reason, len(gen.prompt), len(kept), speculation, logprobs))
