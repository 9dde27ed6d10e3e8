"""Validation of one generation request, done in full before any work starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch

from ..config import SamplingParams
from ..errors import InputError

#: Decoding methods: plain decoding, then drafting by layer skipping, n-gram lookup, token recycling, or all three.
METHODS = ("ar", "swift", "ngram", "recycle", "hybrid")
DEFAULT_METHOD = "hybrid"

PromptIds = Union[Sequence[int], torch.Tensor]  # noqa: UP007 (a runtime alias)


@dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]
    max_new_tokens: int
    method: str
    sampling: SamplingParams


def _prompt_ids(input_ids: PromptIds) -> tuple[int, ...]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise InputError(f"batch size {input_ids.shape[0]} is not supported; pass one prompt of shape (1, n)")
            input_ids = input_ids[0]
        if input_ids.dim() != 1 or input_ids.is_floating_point():
            raise InputError(f"input_ids must be integer token ids of shape (n,) or (1, n), got {tuple(input_ids.shape)}")
        return tuple(int(t) for t in input_ids.tolist())
    if isinstance(input_ids, (str, bytes)):
        raise InputError("input_ids must be token ids; tokenize the text first (see skipspec.load)")
    try:
        return tuple(int(t) for t in input_ids)
    except (TypeError, ValueError):
        raise InputError(f"input_ids must be a list of ints or a (1, n) tensor, got {type(input_ids).__name__}") from None


def make_request(
    input_ids: PromptIds,
    *,
    max_new_tokens: int,
    method: str,
    sampling: SamplingParams,
    vocab_size: int,
    max_positions: int | None,
) -> Request:
    prompt = _prompt_ids(input_ids)
    if not prompt:
        raise InputError("the prompt is empty: at least one token is needed to condition on")
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise InputError(f"token ids {bad[:5]} are outside the model's vocabulary of {vocab_size}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if max_positions is not None:
        if len(prompt) >= max_positions:
            raise InputError(f"the prompt has {len(prompt)} tokens, at or over the model's context of {max_positions}")
        if len(prompt) + max_new_tokens > max_positions:
            raise InputError(
                f"prompt ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context "
                f"of {max_positions}; ask for at most {max_positions - len(prompt)} new tokens"
            )
    return Request(prompt, max_new_tokens, method, sampling)
