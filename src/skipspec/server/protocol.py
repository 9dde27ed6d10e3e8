"""OpenAI request bodies -> validated, frozen values; OpenAI's error body.

Everything a client can get wrong is found here, before a request is queued, and answered with
OpenAI's shape `{"error": {"message", "type", "param", "code"}}`. Parameters that would change the
output in ways the decoder does not implement (penalties, logit bias, tools, n > 1) are refused
rather than silently ignored: a response always equals what `SwiftDecoder.generate` produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import SamplingParams
from ..errors import ConfigError

# OpenAI allows up to 4 stop sequences and up to 20 alternatives per token.
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20
# OpenAI's legacy completions endpoint generates 16 tokens when max_tokens is omitted.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# torch.Generator.manual_seed accepts this range.
_SEED_RANGE = (-(2**63), 2**64 - 1)
# Roles the chat templates know; OpenAI's newer "developer" role is a system message to them.
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class APIError(Exception):
    """An error answered with OpenAI's body; `status` is the HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 (OpenAI's field name)
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationSpec:
    """One validated request of either endpoint; the prompt is not tokenized yet.

    messages: chat requests; prompt: completions requests (text, or token ids).
    max_tokens: None means "up to the context length" (chat's default).
    top_logprobs: None when no log-probabilities were asked for; else alternatives per token (0-20).
    """

    endpoint: str  # "chat" | "completion"
    messages: tuple[Message, ...] | None
    prompt: str | tuple[int, ...] | None
    max_tokens: int | None
    sampling: SamplingParams
    stop: tuple[str, ...]
    top_logprobs: int | None
    stream: bool
    include_usage: bool

    def __post_init__(self) -> None:
        if self.endpoint not in ("chat", "completion"):
            raise ValueError(f"endpoint must be 'chat' or 'completion', got {self.endpoint!r}")
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of messages (chat) and prompt (completion) is given")


# -- field readers: each returns the value or raises a 400 naming the parameter -----------------


def _get(body: dict, name: str, default: Any = None) -> Any:
    value = body.get(name, default)
    return default if value is None else value


def _bool(body: dict, name: str, default: bool) -> bool:
    value = _get(body, name, default)
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be a boolean, got {value!r}", name)
    return value


def _int(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer, got {value!r}", name)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise bad_request(f"'{name}' must be {bounds}, got {value}", name)
    return value


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = _get(body, name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"'{name}' must be a number, got {value!r}", name)
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low} and {high}, got {value}", name)
    return float(value)


def _refuse_unless_default(body: dict, name: str, default_ok) -> None:
    """Parameters skipspec does not implement are accepted only at their no-op value."""
    if name in body and body[name] is not None and not default_ok(body[name]):
        raise bad_request(f"'{name}' is not supported by this server", name, "unsupported_parameter")


def _common(body: dict) -> tuple[SamplingParams, tuple[str, ...], bool, bool]:
    """Parameters both endpoints share -> (sampling, stop strings, stream, include_usage)."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request(f"'model' must be a string, got {model!r}", "model")
    n = _int(body, "n", 1, None)
    if n is not None and n != 1:
        raise bad_request(f"only n=1 is supported, got n={n}", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        _refuse_unless_default(body, name, lambda v: v == 0)
    _refuse_unless_default(body, "logit_bias", lambda v: v == {})
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    # top_k is not OpenAI's, but vLLM's clients send it; -1 is their "off".
    top_k = _get(body, "top_k", 0)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < -1:
        raise bad_request(f"'top_k' must be an integer >= -1 (-1 or 0: off), got {top_k!r}", "top_k")
    seed = _int(body, "seed", *_SEED_RANGE)
    # Temperature 0 is OpenAI's greedy; top_p 0 keeps only the most likely token, which is greedy too.
    greedy = temperature == 0.0 or top_p == 0.0
    try:
        sampling = SamplingParams(
            do_sample=not greedy,
            temperature=temperature if not greedy else 1.0,
            top_p=top_p if not greedy else 1.0,
            top_k=max(top_k, 0),
            seed=seed,
        )
    except ConfigError as e:  # the ranges above make this unreachable; kept as a guard
        raise bad_request(str(e)) from None
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object", "stream_options")
        include_usage = _bool(options, "include_usage", False)
    return sampling, _stops(body.get("stop")), stream, include_usage


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise bad_request(f"'stop' takes at most {MAX_STOPS} sequences, got {len(stops)}", "stop")
    if any(s == "" for s in stops):
        raise bad_request("'stop' sequences must be non-empty", "stop")
    return tuple(dict.fromkeys(stops))


def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def parse_chat(body: Any) -> GenerationSpec:
    """A `/v1/chat/completions` body -> GenerationSpec (raises APIError 400)."""
    body = _object(body)
    sampling, stop, stream, include_usage = _common(body)
    for name in ("tools", "functions"):
        _refuse_unless_default(body, name, lambda v: v == [])
    _refuse_unless_default(body, "tool_choice", lambda v: v == "none")
    _refuse_unless_default(body, "response_format", lambda v: isinstance(v, dict) and v.get("type") == "text")
    max_tokens = _int(body, "max_tokens", 1)
    # The newer name wins when both are sent.
    max_completion = _int(body, "max_completion_tokens", 1)
    logprobs = _bool(body, "logprobs", False)
    top = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise bad_request("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
    return GenerationSpec(
        endpoint="chat",
        messages=_messages(body.get("messages")),
        prompt=None,
        max_tokens=max_completion if max_completion is not None else max_tokens,
        sampling=sampling,
        stop=stop,
        top_logprobs=(top or 0) if logprobs else None,
        stream=stream,
        include_usage=include_usage,
    )


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"'{where}' must be an object", where)
        role = m.get("role")
        if role not in _ROLES:
            raise bad_request(f"'{where}.role' must be one of {sorted(_ROLES)}, got {role!r}", f"{where}.role")
        out.append(Message(_ROLES[role], _content(m.get("content"), f"{where}.content")))
    return tuple(out)


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (joined); other part types are refused."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"'{where}': only text content parts are supported", where)
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"'{where}' must be a string or a list of text parts", where)


def parse_completion(body: Any) -> GenerationSpec:
    """A `/v1/completions` body -> GenerationSpec (raises APIError 400)."""
    body = _object(body)
    sampling, stop, stream, include_usage = _common(body)
    _refuse_unless_default(body, "echo", lambda v: v is False)
    _refuse_unless_default(body, "best_of", lambda v: v == 1)
    _refuse_unless_default(body, "suffix", lambda v: v == "")
    max_tokens = _int(body, "max_tokens", 1)
    top = _int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    return GenerationSpec(
        endpoint="completion",
        messages=None,
        prompt=_prompt(body.get("prompt")),
        max_tokens=COMPLETIONS_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        sampling=sampling,
        stop=stop,
        top_logprobs=top,
        stream=stream,
        include_usage=include_usage,
    )


def _prompt(value: Any) -> str | tuple[int, ...]:
    """One prompt: text, token ids, or a list holding exactly one of those (batches are refused)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return tuple(value)
    if isinstance(value, list) and len(value) > 1 and all(isinstance(p, (str, list)) for p in value):
        raise bad_request("only one prompt per request is supported", "prompt")
    raise bad_request("'prompt' must be a string or a list of token ids", "prompt")
