"""OpenAI response bodies and stream chunks, for both endpoints.

`skipspec` is this server's own field on a response (or on a stream's last chunk): the speculation
statistics of the request (`mean_accepted`, `drafted_tokens`, `accepted_tokens`, `by_source`, ...).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from .backend import TokenLogprob


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict:
    """OpenAI chat's `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": _bytes(e.token),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": _bytes(t)} for t, lp in e.top],
            }
            for e in entries
        ]
    }


def completion_logprobs(entries: Sequence[TokenLogprob], offset: int = 0) -> dict:
    """OpenAI completions' `logprobs`: parallel lists, `text_offset` counting characters of the text."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": offsets,
    }


@dataclass(frozen=True)
class ResponseFrame:
    """What every chunk of one response shares: id, creation time, model, endpoint."""

    endpoint: str  # "chat" | "completion"
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if self.endpoint not in ("chat", "completion"):
            raise ValueError(f"endpoint must be 'chat' or 'completion', got {self.endpoint!r}")
        if not self.id:
            prefix = "chatcmpl" if self.endpoint == "chat" else "cmpl"
            object.__setattr__(self, "id", f"{prefix}-{uuid.uuid4().hex}")

    def _head(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}

    def _logprobs(self, entries: Sequence[TokenLogprob] | None) -> dict | None:
        if entries is None:
            return None
        return chat_logprobs(entries) if self.endpoint == "chat" else completion_logprobs(entries)

    def response(self, text: str, finish_reason: str, logprobs, usage_: dict, speculation: dict) -> dict:
        """The whole non-streamed response."""
        if self.endpoint == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
            head = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": text}
            head = self._head("text_completion")
        choice.update(logprobs=self._logprobs(logprobs), finish_reason=finish_reason)
        return {**head, "choices": [choice], "usage": usage_, "skipspec": speculation}

    def chunk(
        self,
        text: str | None = None,
        *,
        first: bool = False,
        finish_reason: str | None = None,
        logprobs: Sequence[TokenLogprob] | None = None,
        include_usage: bool = False,
        speculation: dict | None = None,
    ) -> dict:
        """One streamed chunk with one choice. With `include_usage`, every chunk carries `usage: null`
        but the last, as OpenAI's do."""
        if self.endpoint == "chat":
            delta: dict = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta}
            out = self._head("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": text or ""}
            out = self._head("text_completion")
        choice.update(logprobs=self._logprobs(logprobs), finish_reason=finish_reason)
        out["choices"] = [choice]
        if include_usage:
            out["usage"] = None
        if speculation is not None:
            out["skipspec"] = speculation
        return out

    def usage_chunk(self, usage_: dict) -> dict:
        """The stream's last chunk when usage was asked for: no choices, only usage."""
        name = "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"
        return {**self._head(name), "choices": [], "usage": usage_}
