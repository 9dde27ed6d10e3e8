"""The one model a server runs: its tokenizer, its decoder, and the log-probabilities of an output.

The server's only door into the engine. Generation and log-probabilities run on the scheduler's
worker thread, one request at a time; tokenization also runs on the event loop (to validate a
request before it is queued), so tokenizer calls share a lock: a fast tokenizer is not safe to
use from two threads at once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import SamplingParams
from .protocol import Message, bad_request

# JSON has no -inf; tokens that top-p or top-k removed get this log-probability (vLLM does the same).
MIN_LOGPROB = -9999.0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and its `top` most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


class Backend:
    """A model, its tokenizer and a `SwiftDecoder` over it, served under `name`.

    method: passed to `decoder.stream` when given; None leaves the decoder's own default.
    max_context: the longest prompt + completion served (default: the model's context length).
    """

    def __init__(
        self,
        model,
        tokenizer,
        decoder,
        *,
        name: str,
        stop_token_ids: Sequence[int],
        method: str | None = None,
        max_context: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.name = name
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        self.method = method
        model_context = getattr(model.config, "max_position_embeddings", None)
        if max_context is not None and max_context < 2:
            raise ValueError(f"max_context must be >= 2, got {max_context}")
        limits = [c for c in (model_context, max_context) if c is not None]
        self.max_context: int | None = min(limits) if limits else None
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.tokenizer_lock = threading.Lock()

    @classmethod
    def build(cls, model, tokenizer, *, name: str, config=None, method: str | None = None, max_context=None) -> Backend:
        """A backend with a new decoder that stops at the model's EOS and the template's end-of-turn ids."""
        from ..engine import SwiftDecoder
        from ..engine.stops import tokenizer_stop_token_ids

        stops = tokenizer_stop_token_ids(tokenizer, model)
        decoder = SwiftDecoder(model, config, stop_token_ids=stops)
        return cls(model, tokenizer, decoder, name=name, stop_token_ids=stops, method=method, max_context=max_context)

    # -- prompts (event loop) -------------------------------------------------------------------

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise bad_request("this model's tokenizer has no chat template; use /v1/completions", "messages")
        chat = [{"role": m.role, "content": m.content} for m in messages]
        try:
            with self.tokenizer_lock:
                ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        except Exception as e:  # jinja templates raise their own errors for conversations they refuse
            raise bad_request(f"the chat template refused these messages: {e}", "messages") from None
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)

    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            with self.tokenizer_lock:
                return list(self.tokenizer(prompt)["input_ids"])
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise bad_request(f"token ids {bad[:5]} are outside the vocabulary of {self.vocab_size}", "prompt")
        return list(prompt)

    def completion_budget(self, prompt: Sequence[int], max_tokens: int | None, param: str) -> int:
        """The number of new tokens to ask for; a 400 when the prompt or the request does not fit."""
        if not prompt:
            raise bad_request("the prompt is empty: at least one token is needed", param)
        if self.max_context is None:
            if max_tokens is None:
                raise bad_request("this model has no known context length: set max_tokens", "max_tokens")
            return max_tokens
        room = self.max_context - len(prompt)
        if room < 1:
            raise bad_request(
                f"the prompt has {len(prompt)} tokens; this model's context is {self.max_context} tokens",
                param,
                "context_length_exceeded",
            )
        if max_tokens is None:
            return room
        if max_tokens > room:
            raise bad_request(
                f"the prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) exceeds this model's context "
                f"of {self.max_context} tokens; ask for at most {room}",
                "max_tokens",
                "context_length_exceeded",
            )
        return max_tokens

    # -- generation (worker thread) -------------------------------------------------------------

    def warmup(self) -> None:
        """Pay first-use costs (step graphs, cost measurements) before the first request does."""
        if hasattr(self.decoder, "warmup") and self.max_context is not None:
            from ..verify import SAMPLING_PROGRAMS

            # Requests bring any sampling settings: every program, so that none of them captures;
            # and only the served method's one-time costs (plain decoding measures no step costs).
            methods = {"methods": (self.method,)} if self.method is not None else {}
            self.decoder.warmup(max_context=self.max_context, sampling=SAMPLING_PROGRAMS, **methods)
            return
        # An engine without warm-up, or a model of unknown context length (nothing to size the
        # cache for): one short request sets it up the way a real one would.
        with self.tokenizer_lock:
            ids = list(self.tokenizer("Hello")["input_ids"]) or [0]
        kwargs = {"method": self.method} if self.method is not None else {}
        self.decoder.generate(ids, 2, **kwargs)

    def stream(self, prompt: Sequence[int], max_tokens: int, sampling: SamplingParams):
        """Start one request on the decoder; iterate the returned TokenStream to run it."""
        kwargs = dataclasses.asdict(sampling)
        if self.method is not None:
            kwargs["method"] = self.method
        return self.decoder.stream(list(prompt), max_tokens, **kwargs)

    def decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        with self.tokenizer_lock:
            return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    @torch.inference_mode()
    def logprobs(
        self, prompt: Sequence[int], tokens: Sequence[int], sampling: SamplingParams, top: int
    ) -> list[TokenLogprob]:
        """Log-probabilities of `tokens` after `prompt` under the distribution they were drawn from.

        One full forward of the model over prompt + tokens (the decoder's cache is not reused: it
        is the engine's, and a verify step's logits cover only the nodes of its tree). The logits
        are processed as for sampling (temperature, top-k, top-p; greedy: unchanged), then
        log-softmaxed, so the numbers are the target's own, never the drafter's.
        """
        if not tokens:
            return []
        from ..parallel import full_logits
        from ..verify import SamplingInputs, process_logits, sampling_program

        device = self.model.get_output_embeddings().weight.device
        ids = torch.tensor([list(prompt) + list(tokens[:-1])], device=device)
        logits = full_logits(self.model, ids, len(tokens))  # a tensor-parallel model's other ranks run it too
        values = SamplingInputs.of(sampling, device)
        processed = process_logits(logits[0, -len(tokens) :].float(), sampling_program(sampling), values)
        logprobs = torch.log_softmax(processed, dim=-1).clamp(min=MIN_LOGPROB)
        chosen = logprobs.gather(-1, torch.tensor(list(tokens), device=device)[:, None])[:, 0].tolist()
        alt_values, alt_ids = logprobs.topk(top, dim=-1) if top else (None, None)
        result = []
        for i, (token, lp) in enumerate(zip(tokens, chosen)):
            alts = ()
            if top:
                alts = tuple((self.decode([a]), v) for a, v in zip(alt_ids[i].tolist(), alt_values[i].tolist()))
            result.append(TokenLogprob(self.decode([token]), lp, alts))
        return result
