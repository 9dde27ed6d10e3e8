"""An OpenAI-compatible HTTP server over one model and one decoder (`skipspec serve`).

    from skipspec.server import Backend, ServerSettings, create_app
    app = create_app(Backend.build(model, tokenizer, name="my-model"), ServerSettings(max_queue=16))

Needs the `server` extra (FastAPI, uvicorn, prometheus-client); nothing of it loads until used.
"""

from __future__ import annotations

_LAZY = {
    "Backend": ".backend",
    "ServerSettings": ".app",
    "create_app": ".app",
    "LoadConfig": ".load",
    "run_load": ".load",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    # Lazy, so that `skipspec.cli` can register the commands without importing FastAPI.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
