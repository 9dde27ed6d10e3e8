"""A load run against a server: N clients send M streaming chat requests in all.

Measured on the client side, per request: time to first token (first content chunk), the gaps
between content chunks (inter-token latency; one chunk may carry a verify step's several tokens),
end-to-end latency, and completion tokens (from the stream's `usage`). The report gives throughput
(requests/s, tokens/s over the run's wall time) and p50/p99 of each latency.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LoadConfig:
    url: str = "http://127.0.0.1:8000"
    clients: int = 4
    requests: int = 32
    max_tokens: int = 64
    prompt: str = "Write a short story about the sea."
    temperature: float = 0.0
    api_key: str | None = None
    model: str | None = None  # default: the first model /v1/models lists
    timeout: float = 600.0

    def __post_init__(self) -> None:
        for name in ("clients", "requests", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature!r}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it; `error` is None when it completed."""

    ttft: float | None
    gaps: tuple[float, ...]
    e2e: float
    tokens: int
    error: str | None = None


@dataclass(frozen=True)
class LoadReport:
    requests: int
    failed: int
    duration_s: float
    requests_per_s: float
    tokens_per_s: float
    ttft_p50: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float
    e2e_p50: float
    e2e_p99: float
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        ms = 1000.0
        return "\n".join([
            f"requests     {self.requests - self.failed}/{self.requests} ok in {self.duration_s:.2f} s",
            f"throughput   {self.requests_per_s:.2f} requests/s, {self.tokens_per_s:.1f} tokens/s",
            f"TTFT         p50 {self.ttft_p50 * ms:.1f} ms, p99 {self.ttft_p99 * ms:.1f} ms",
            f"ITL          p50 {self.itl_p50 * ms:.1f} ms, p99 {self.itl_p99 * ms:.1f} ms",
            f"e2e          p50 {self.e2e_p50 * ms:.1f} ms, p99 {self.e2e_p99 * ms:.1f} ms",
            *(f"error        {e}" for e in self.errors[:5]),
        ])  # fmt: skip


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default; NaN when empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(records: Sequence[RequestRecord], duration: float) -> LoadReport:
    ok = [r for r in records if r.error is None]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    e2e = [r.e2e for r in ok]
    tokens = sum(r.tokens for r in ok)
    return LoadReport(
        requests=len(records),
        failed=len(records) - len(ok),
        duration_s=duration,
        requests_per_s=len(ok) / duration if duration > 0 else 0.0,
        tokens_per_s=tokens / duration if duration > 0 else 0.0,
        ttft_p50=percentile(ttft, 50), ttft_p99=percentile(ttft, 99),
        itl_p50=percentile(gaps, 50), itl_p99=percentile(gaps, 99),
        e2e_p50=percentile(e2e, 50), e2e_p99=percentile(e2e, 99),
        errors=tuple(r.error for r in records if r.error is not None),
    )  # fmt: skip


def run_load(config: LoadConfig) -> LoadReport:
    """Run the load and summarize it (blocks until every request has ended)."""
    return asyncio.run(_run(config))


async def _run(config: LoadConfig) -> LoadReport:
    import httpx

    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    base = config.url.rstrip("/")
    limits = httpx.Limits(max_connections=config.clients)
    async with httpx.AsyncClient(headers=headers, timeout=config.timeout, limits=limits) as client:
        model = config.model or (await client.get(f"{base}/v1/models")).json()["data"][0]["id"]
        todo = iter(range(config.requests))
        records: list[RequestRecord] = []

        async def worker() -> None:
            for _ in todo:  # the clients share one iterator: M requests in all
                records.append(await _one(client, base, model, config))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(config.clients)))
        duration = time.perf_counter() - start
    return summarize(records, duration)


async def _one(client, base: str, model: str, config: LoadConfig) -> RequestRecord:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": config.prompt}],
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, last, gaps, tokens = None, None, [], 0
    try:
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return RequestRecord(None, (), time.perf_counter() - start, 0, f"HTTP {response.status_code}: {text[:200]}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    return RequestRecord(None, (), time.perf_counter() - start, 0, chunk["error"].get("message"))
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    now = time.perf_counter()
                    if first is None:
                        first = now - start
                    else:
                        gaps.append(now - last)
                    last = now
    except Exception as e:  # a refused connection, a timeout: the run goes on and reports it
        return RequestRecord(None, (), time.perf_counter() - start, 0, f"{type(e).__name__}: {e}")
    return RequestRecord(first, tuple(gaps), time.perf_counter() - start, tokens)
