"""What the engine asks before each step: which skip set to draft with, or none (decode plainly).

A policy lives in one `SwiftDecoder` and so is never shared between models. It is told about every
verify step through `observe`, which is where an on-the-fly search runs its scoring forwards (in
the request's cache, past the committed slots) within its own time budget.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..config import SamplingParams
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
    sampling:  the request's target-distribution settings (the search scores under them)
    tree_size: nodes of this step's verification tree, root included (1: a plain step)
    cache_busy: the next step is already in flight, writing `cache` past `committed` (a run of
               steps launched ahead of the host): no scoring forward may use those slots now
    """

    adapter: ModelAdapter
    cache: KVCache
    tokens: Sequence[int]
    prompt_len: int
    committed: int
    accepted: int
    drafted: int
    sampling: SamplingParams = SamplingParams()
    tree_size: int = 1
    cache_busy: bool = False


class SkipPolicy(Protocol):
    #: scratch cache slots the policy's scoring forwards need past the committed ones
    scratch_slots: int
    #: seconds spent choosing during the current request (reported as `optimize_time`)
    optimize_time: float

    def begin(self, prompt_len: int, max_new_tokens: int) -> None: ...

    def skip_set(self) -> SkipSet | None: ...

    def observe(self, ctx: StepContext) -> None: ...

    def plain_steps(self) -> int:
        """How many of the next steps are plain (`skip_set()` None) with nothing for `observe` to do
        but count them: no scoring, no use of the cache. The decoder may run that many back to
        back with the next one already launched while it reports the last (see
        `StaticExecutor.plain_steps`). 0 when unsure."""
        ...

    def quiet_steps(self) -> int:
        """How many of the next steps `observe` would only count, were none of them drafted by
        layer skipping and each one token long, whatever `skip_set()` is (a hybrid decoder runs
        steps drafted from text back to back for that many). Steps of several tokens may bring a
        scoring forward sooner: `observe` defers it while `cache_busy`, to the run's last step.
        0 when unsure."""
        ...

    def set_baseline(self, speedup: float) -> None:
        """The decoder realises `speedup` over plain decoding without layer skipping (a hybrid
        decoder's steps drafted from text, measured): a policy that weighs sets by their speed
        may keep only those that beat it. Plain decoding's is 1.0, the starting value."""
        ...

    def stats(self) -> dict:
        """What the policy did so far (search proposals, chosen set size, ...); {} when there is nothing to say."""
        ...


class FixedSkipPolicy:
    """Always the same skip set (SWIFT with `optimize=False`)."""

    scratch_slots = 0

    def __init__(self, skip: SkipSet) -> None:
        self.skip = skip
        self.optimize_time = 0.0

    def begin(self, prompt_len: int, max_new_tokens: int) -> None:
        pass

    def skip_set(self) -> SkipSet | None:
        return self.skip

    def observe(self, ctx: StepContext) -> None:
        pass

    def plain_steps(self) -> int:
        return 0  # it always drafts

    def quiet_steps(self) -> int:
        return sys.maxsize  # its `observe` does nothing

    def set_baseline(self, speedup: float) -> None:
        pass  # the set was asked for

    def stats(self) -> dict:
        return {}
