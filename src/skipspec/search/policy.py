"""What the engine asks before each step: which skip set to draft with, or none (decode plainly).

A policy lives in one `SwiftDecoder` and so is never shared between models. It is told about every
verify step through `observe`, which is where an on-the-fly search runs its scoring forwards (in
the request's cache, past the committed slots) within its own time budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

from ..model.adapter import ModelAdapter
from ..model.cache import KVCache
from ..model.skipset import SkipSet


@dataclass(frozen=True)
class StepContext:
    """The state right after a verify step.

    tokens:    prompt + every token emitted so far (host ints)
    prompt_len: where the output starts in `tokens`
    committed: slots [0, committed) of `cache` hold the full model's KV of tokens[:committed]
    accepted:  draft tokens accepted in this step (bonus excluded); drafted: chain tokens proposed
    """

    adapter: ModelAdapter
    cache: KVCache
    tokens: Sequence[int]
    prompt_len: int
    committed: int
    accepted: int
    drafted: int


class SkipPolicy(Protocol):
    #: scratch cache slots the policy's scoring forwards need past the committed ones
    scratch_slots: int
    #: seconds spent choosing (reported as `optimize_time`)
    optimize_time: float

    def begin(self, prompt_len: int, max_new_tokens: int) -> None: ...

    def skip_set(self) -> Optional[SkipSet]: ...

    def observe(self, ctx: StepContext) -> None: ...


class FixedSkipPolicy:
    """Always the same skip set (SWIFT with `optimize=False`)."""

    scratch_slots = 0

    def __init__(self, skip: SkipSet) -> None:
        self.skip = skip
        self.optimize_time = 0.0

    def begin(self, prompt_len: int, max_new_tokens: int) -> None:
        pass

    def skip_set(self) -> Optional[SkipSet]:
        return self.skip

    def observe(self, ctx: StepContext) -> None:
        pass
