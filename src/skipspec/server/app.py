"""The HTTP app: OpenAI's routes over one `Backend`, a FIFO scheduler in front of it, and metrics.

A request is read, validated, tokenized and checked against the context on the event loop, then
queued; the worker thread decodes it and hands pieces back through a `Channel`. A streamed
response starts only once its first piece exists, so a failure before any token is still a plain
HTTP error (500), not a broken stream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

# FastAPI reads the routes' annotations by name from this module, so these imports live here; the
# module itself is only imported when an app is made (skipspec.server loads it lazily).
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..errors import ConfigError, InputError
from .backend import Backend
from .generation import Failed, Finished, Generation, Piece, run_generation
from .metrics import ServerMetrics
from .protocol import APIError, GenerationSpec, bad_request, parse_chat, parse_completion
from .responses import ResponseFrame, sse, usage
from .scheduler import Channel, FifoScheduler, Job, QueueFull

log = logging.getLogger("skipspec.server")


class _Gone:
    """Put on a request's channel when its client disconnects before the response started."""


@dataclass(frozen=True)
class ServerSettings:
    """api_key: required as `Authorization: Bearer KEY` on /v1 routes (None: open).
    max_queue: requests that may wait behind the running one; more are answered 429.
    retry_after: seconds a 429 tells the client to wait."""

    api_key: str | None = None
    max_queue: int = 64
    retry_after: int = 1

    def __post_init__(self) -> None:
        if self.api_key is not None and not (isinstance(self.api_key, str) and self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        if isinstance(self.retry_after, bool) or not isinstance(self.retry_after, int) or self.retry_after < 1:
            raise ValueError(f"retry_after must be an integer >= 1, got {self.retry_after!r}")


def create_app(backend: Backend, settings: ServerSettings | None = None):
    """A FastAPI app serving `backend`. It warms the model up on start; /health answers 200 after that."""
    settings = settings or ServerSettings()
    metrics = ServerMetrics()
    scheduler = FifoScheduler(settings.max_queue)
    metrics.track_queue(lambda: scheduler.waiting, lambda: scheduler.running)
    ready = threading.Event()
    failure: list[str] = []
    created = int(time.time())

    def warm_up(cancelled: threading.Event) -> None:
        try:
            backend.warmup()
        except Exception as e:
            log.exception("warm-up failed")
            failure.append(f"{type(e).__name__}: {e}")
            return
        ready.set()
        log.info("model %s is warm; serving", backend.name)

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        scheduler.submit(warm_up, force=True)
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.close)

    app = FastAPI(title="skipspec", lifespan=lifespan)

    def error_response(e: APIError) -> JSONResponse:
        metrics.failed(e.status)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):  # unknown routes, wrong methods
        return error_response(APIError(e.status_code, str(e.detail), headers=dict(e.headers or {})))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):  # Starlette still logs the traceback
        return error_response(APIError(500, f"internal error: {type(e).__name__}", type="server_error"))

    def check_ready() -> None:
        if failure:
            raise APIError(503, f"the model failed to start: {failure[0]}", type="server_error", code="model_failed")
        if not ready.is_set():
            raise APIError(503, "the model is warming up; retry shortly", type="server_error", code="model_loading")

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken must not tell how much of a guessed key was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "Incorrect API key provided: pass it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")  # fmt: skip

    @app.get("/health")
    async def health():
        check_ready()
        return {"status": "ok", "model": backend.name}

    @app.get("/metrics")
    async def prometheus_metrics():
        content, content_type = metrics.exposition()
        return Response(content, media_type=content_type)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        card = {"id": backend.name, "object": "model", "created": created, "owned_by": "skipspec",
                "max_model_len": backend.max_context}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, parse_chat)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, parse_completion)

    async def complete(request: Request, parse):
        arrival = time.monotonic()
        authorize(request)
        check_ready()
        spec: GenerationSpec = parse(await _read_json(request))
        if spec.endpoint == "chat":
            prompt, param = backend.encode_chat(spec.messages), "messages"
        else:
            prompt, param = backend.encode_prompt(spec.prompt), "prompt"
        max_tokens = backend.completion_budget(prompt, spec.max_tokens, param)
        gen = Generation(tuple(prompt), max_tokens, spec.sampling, spec.stop, spec.top_logprobs, arrival)
        channel = Channel(asyncio.get_running_loop())
        try:
            job = scheduler.submit(lambda cancelled: run_generation(backend, gen, channel.put, cancelled, metrics))
        except QueueFull as e:
            retry = {"Retry-After": str(settings.retry_after)}
            raise APIError(429, f"the server is busy ({e}); retry later", type="rate_limit_error",
                           code="rate_limit_exceeded", headers=retry) from None  # fmt: skip
        frame = ResponseFrame(spec.endpoint, backend.name)
        if spec.stream:
            first = await _next_event(request, channel, job)
            if isinstance(first, _Gone):
                return Response(status_code=499)  # nobody is listening; the job is already dropped
            _raise_failure(first)
            return StreamingResponse(
                _stream(frame, spec, first, channel, job),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        pieces = []
        while True:
            event = await _next_event(request, channel, job)
            if isinstance(event, _Gone):
                return Response(status_code=499)
            _raise_failure(event)
            if isinstance(event, Piece):
                pieces.append(event.text)
                continue
            pieces.append(event.text)
            return frame.response("".join(pieces), event.finish_reason, event.logprobs,
                                  usage(event.prompt_tokens, event.completion_tokens), event.speculation)  # fmt: skip

    return app


async def _read_json(request) -> object:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None


def _failure(error: Exception) -> APIError:
    # The engine checks requests too (e.g. whether the cache fits on the device); what it refuses is
    # the client's to change, anything else is the server's fault.
    if isinstance(error, (InputError, ConfigError)):
        return bad_request(str(error))
    return APIError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error", code="internal_error")


def _raise_failure(event) -> None:
    if isinstance(event, Failed):
        raise _failure(event.error)


async def _next_event(request, channel: Channel, job: Job):
    """The job's next event; if the client disconnects first, cancel the job and return `_Gone`."""
    get = asyncio.ensure_future(channel.get())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if get in done:
        return get.result()
    get.cancel()
    job.cancel()
    return _Gone()


async def _disconnected(request) -> None:
    # After the body has been read, the server's next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(frame: ResponseFrame, spec: GenerationSpec, event, channel: Channel, job: Job):
    """The server-sent events of one response. Starlette cancels this generator when the client
    disconnects; `finally` then cancels the job, which stops at its next decode step."""
    usage_on = spec.include_usage
    started = False
    try:
        while True:
            if isinstance(event, Failed):
                yield sse(_failure(event.error).body())
                yield sse("[DONE]")
                return
            if event.text or (isinstance(event, Finished) and not started and spec.endpoint == "chat"):
                yield sse(frame.chunk(event.text, first=not started, include_usage=usage_on))
                started = True
            if isinstance(event, Finished):
                if event.logprobs is not None:
                    # Log-probabilities come from one forward after generation, so they arrive last.
                    yield sse(frame.chunk(None, logprobs=event.logprobs, include_usage=usage_on))
                yield sse(frame.chunk(None, finish_reason=event.finish_reason, include_usage=usage_on,
                                      speculation=event.speculation))  # fmt: skip
                if usage_on:
                    yield sse(frame.usage_chunk(usage(event.prompt_tokens, event.completion_tokens)))
                yield sse("[DONE]")
                return
            event = await channel.get()
    finally:
        job.cancel()
