"""Prometheus metrics of one server, named after vLLM's (`vllm:` -> `skipspec:`).

Each server has its own registry, so two apps in one process (tests) never mix counts, and nothing
lives at module level. prometheus-client appends `_total` to counters when it writes them out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

# vLLM's buckets, with finer low ends: a decode step of a small model takes milliseconds.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0)  # fmt: skip
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                5.0, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


class ServerMetrics:
    """The server's metrics and their registry; every method is safe from any thread."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.ttft = Histogram("skipspec:time_to_first_token_seconds", "Time from arrival to the first token.",
                              buckets=_TTFT_BUCKETS, registry=r)  # fmt: skip
        # One observation per decode step that produced tokens (a verify step may add several).
        self.itl = Histogram("skipspec:inter_token_latency_seconds", "Time between successive decode steps' tokens.",
                             buckets=_ITL_BUCKETS, registry=r)  # fmt: skip
        self.e2e = Histogram("skipspec:e2e_request_latency_seconds", "Time from arrival to the last token.",
                             buckets=_E2E_BUCKETS, registry=r)  # fmt: skip
        self.waiting = Gauge("skipspec:num_requests_waiting", "Requests queued behind the running one.", registry=r)
        self.running = Gauge("skipspec:num_requests_running", "Requests being decoded (0 or 1).", registry=r)
        self.prompt_tokens = Counter("skipspec:prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter("skipspec:generation_tokens", "Tokens generated.", registry=r)
        self.success = Counter("skipspec:request_success", "Finished requests, by finish reason (abort: the client left).",
                               ["finished_reason"], registry=r)  # fmt: skip
        self.failure = Counter("skipspec:request_failure", "Requests answered with an error, by HTTP status.",
                               ["status_code"], registry=r)  # fmt: skip
        self.num_drafts = Counter("skipspec:spec_decode_num_drafts", "Verify steps that checked a draft.", registry=r)
        self.num_draft_tokens = Counter("skipspec:spec_decode_num_draft_tokens", "Drafted tokens verified.", registry=r)
        self.num_accepted_tokens = Counter("skipspec:spec_decode_num_accepted_tokens", "Drafted tokens accepted.",
                                           registry=r)  # fmt: skip

    def track_queue(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        """The gauges read the scheduler when scraped, so they can never drift from it."""
        self.waiting.set_function(waiting)
        self.running.set_function(running)

    def finished(self, *, e2e: float, prompt_tokens: int, completion_tokens: int, reason: str, speculation: Mapping) -> None:
        self.e2e.observe(e2e)
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.success.labels(finished_reason=reason).inc()
        self.num_drafts.inc(speculation.get("drafts", 0))
        self.num_draft_tokens.inc(speculation.get("drafted_tokens", 0))
        self.num_accepted_tokens.inc(speculation.get("accepted_tokens", 0))

    def failed(self, status: int) -> None:
        self.failure.labels(status_code=str(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        """-> (the text format, its content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
