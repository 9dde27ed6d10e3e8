"""`skipspec serve` and `skipspec serve-load`: arguments -> backend -> uvicorn, and a load run.

Only typer is imported here; FastAPI, uvicorn, prometheus-client and httpx (the `server` extra)
load when a command runs, so `skipspec --help` works without them.
"""

from __future__ import annotations

import json

import typer


def serve(
    model: str = typer.Option(..., "--model", "-m", help="Local folder, .gguf file, offline model name or hub id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: all)."),
    port: int = typer.Option(8000, "--port", help="TCP port to listen on."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda | cuda:N (default: cuda when there is one)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16"),
    method: str | None = typer.Option(None, "--method", help="Decoding method passed to the decoder (default: its own)."),
    max_queue: int = typer.Option(64, "--max-queue", min=0, help="Requests that may wait; more are answered 429."),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="SKIPSPEC_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1 routes."
    ),
    max_context: int | None = typer.Option(
        None, "--max-context", min=2, help="Longest prompt + completion served (default: the model's context)."
    ),
    served_name: str | None = typer.Option(None, "--served-model-name", help="Model id in the API (default: --model)."),
    log_level: str = typer.Option("info", "--log-level", help="debug | info | warning | error"),
    tensor_parallel: bool = typer.Option(
        False,
        "--tensor-parallel",
        help="Split the model over the processes torchrun started (torchrun --nproc-per-node N --no-python skipspec "
        "serve ... --tensor-parallel); rank 0 serves, the other ranks run its steps.",
    ),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (chat, completions, streaming, /metrics)."""
    import logging

    from rich.console import Console

    from .. import load, parallel
    from ..errors import SkipSpecError

    err = Console(stderr=True)
    from ..engine.request import METHODS

    if method is not None and method not in METHODS:  # checked before the model loads
        err.print(f"[bold red]error:[/] --method must be one of {', '.join(METHODS)}, got {method!r}")
        raise typer.Exit(2)
    if log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        err.print(f"[bold red]error:[/] --log-level must be debug, info, warning or error, got {log_level!r}")
        raise typer.Exit(2)
    try:
        import uvicorn

        from .app import ServerSettings, create_app
        from .backend import Backend
    except ImportError as e:
        err.print(f"[bold red]error:[/] the server needs its extra: pip install 'skipspec[server]' ({e})")
        raise typer.Exit(2) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        mdl, tok = load(model, device=device, dtype=dtype, tensor_parallel=tensor_parallel)
    except (SkipSpecError, ValueError) as e:
        err.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None

    def main() -> None:
        try:
            backend = Backend.build(mdl, tok, name=served_name or model, method=method, max_context=max_context)
            settings = ServerSettings(api_key=api_key, max_queue=max_queue)
        except (SkipSpecError, ValueError) as e:
            err.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2) from None
        err.print(f"serving {backend.name} on http://{host}:{port}/v1 (warming up; GET /health answers 200 when ready)")
        uvicorn.run(create_app(backend, settings), host=host, port=port, log_level=log_level)

    # Under tensor parallelism rank 0 serves; the other ranks run its steps until it stops.
    parallel.run(mdl, main)


def serve_load(
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="The server's base URL (without /v1)."),
    clients: int = typer.Option(4, "--clients", "-c", min=1, help="Concurrent clients."),
    requests: int = typer.Option(32, "--requests", "-r", min=1, help="Requests in all."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", min=1, help="Tokens each request asks for."),
    prompt: str = typer.Option("Write a short story about the sea.", "--prompt", help="Each request's user message."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="SKIPSPEC_API_KEY", help="Bearer key the server requires."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Load a running server with streaming chat requests; report throughput and latency percentiles."""
    from .load import LoadConfig, run_load

    try:
        config = LoadConfig(url=url, clients=clients, requests=requests, max_tokens=max_tokens, prompt=prompt,
                            temperature=temperature, api_key=api_key)  # fmt: skip
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    report = run_load(config)
    print(json.dumps(report.to_dict()) if as_json else report.table())
    if report.failed == report.requests:
        raise typer.Exit(1)
