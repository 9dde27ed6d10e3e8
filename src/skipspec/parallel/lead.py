"""Rank 0's executor of a tensor-parallel model: each step it runs, every other rank runs too.

Every forward of a sharded model is a collective (its row-parallel projections all-reduce), so
all ranks must run the same forwards in the same order. Rank 0 runs the whole decoder: the
requests, the drafters, the node allocation, the skip-set search and its timings, the seeds, the
stop rule. Everything timing or randomness could make differ is decided there once. What reaches
the model goes through the executor, and `LeadExecutor` sends each executor call to the other
ranks (`channel`) before running it, where `follow` runs the same call on an executor built from
the same `ExecutorSpec`. Their executors compute the same steps from the same inputs, so their KV
caches hold their shares of the same keys and values, and each checks that its steps accepted
the tokens rank 0's did.

The search reaches the model outside the executor protocol in two places on an eager executor
(its influence probe runs a forward with hooks; its cost measurement builds its own forward
timer), so here `sublayer_sizes` and `cost_timer` always answer, through the channel.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..config import SamplingParams
from ..errors import ConfigError, SkipSpecError
from ..model.adapter import Frame, ModelAdapter
from ..model.cache import KVCache
from ..model.skipset import NO_SKIP, SkipSet
from ..runtime.executor import Executor, TreeInput, Verified
from ..runtime.factory import ExecutorSpec
from .channel import Channel


class LeadExecutor:
    """An `Executor` on rank 0 that has every other rank run each of its steps (see the module docstring)."""

    def __init__(self, inner: Executor, channel: Channel, spec: ExecutorSpec) -> None:
        self.inner = inner
        self.channel = channel
        self.id = channel.new_id()
        channel.send("executor", self.id, spec)
        weakref.finalize(self, channel.forget, "executor", self.id)

    # -- state, as the inner executor has it --------------------------------------------------

    @property
    def adapter(self) -> ModelAdapter:
        return self.inner.adapter

    @property
    def cache(self) -> KVCache | None:
        return self.inner.cache

    @property
    def committed(self) -> int:
        return self.inner.committed

    @property
    def capture_time(self) -> float:
        return self.inner.capture_time

    @property
    def draft_calls(self) -> int:
        return self.inner.draft_calls

    @property
    def tag(self) -> str:
        # Step costs, and so saved sets, depend on how many ranks share a step.
        return f"{self.inner.tag}+tp{self.channel.world_size}"

    def __getattr__(self, name: str):
        # The inner executor's values (its buckets, capture counts, limits) read as they are; its
        # methods outside the protocol would run steps on rank 0 alone, so they are not offered.
        if name == "inner":
            raise AttributeError(name)
        value = getattr(self.inner, name)
        if callable(value):
            raise AttributeError(
                f"{type(self.inner).__name__}.{name} is not available under tensor parallelism: only the executor "
                "protocol's steps reach the other ranks"
            )
        return value

    # -- steps ----------------------------------------------------------------------------------

    def check(self, prompt_len: int, max_new_tokens: int, scratch: int, sampling: bool) -> None:
        self.channel.send("check", self.id, prompt_len, max_new_tokens, scratch, sampling)
        agree(self.channel, lambda: self.inner.check(prompt_len, max_new_tokens, scratch, sampling))

    def warmup(self, max_context: int, scratch: int, programs, skips, tick=None, drafting=()) -> None:
        # `drafting` is always empty here: the decoder runs drafting steps on a `StaticExecutor` only.
        # Capturing allocates the cache first: every rank must have the room before any captures.
        self.check(max_context, 0, scratch, any(p.sample for p in programs))
        self.channel.send("warmup", self.id, max_context, scratch, tuple(programs), tuple(skips))
        self.inner.warmup(max_context, scratch, programs, skips, tick)

    def warmup_steps(self, max_context: int, scratch: int, programs, skips, drafting=()) -> int:
        return self.inner.warmup_steps(max_context, scratch, programs, skips)  # a count: no rank runs anything

    def prefill(self, prompt: Sequence[int], max_new_tokens: int, scratch: int, sampling: SamplingParams, seed: int) -> int:
        self.channel.send("prefill", self.id, tuple(prompt), max_new_tokens, scratch, sampling, seed)
        token = self.inner.prefill(prompt, max_new_tokens, scratch, sampling, seed)
        self.channel.expect(self.id, (token,))
        return token

    def verify(self, tree: TreeInput | None, sampling: SamplingParams) -> Verified:
        self.channel.send("verify", self.id, tree, sampling)
        step = self.inner.verify(tree, sampling)
        self.channel.expect(self.id, outcome(step))
        return step

    def plain_steps(self, limit: int, sampling: SamplingParams) -> Iterator[Verified]:
        # The other ranks open the same generator and advance it once per "next": a step the GPU
        # executor launches ahead is launched on every rank. One left early is dropped as rank 0's
        # is (a step in flight writes only past the committed slots).
        self.channel.send("plain", self.id, limit, sampling)
        steps = self.inner.plain_steps(limit, sampling)
        while True:
            self.channel.send("next", self.id)
            step = next(steps, None)
            if step is None:
                return
            self.channel.expect(self.id, outcome(step))
            yield step

    def verify_size(self, nodes: int) -> int:
        return self.inner.verify_size(nodes)

    def draft_forward(self, skip: SkipSet, sampling: SamplingParams, *, start: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self.channel.send("draft", self.id, skip, sampling, start)
        return self.inner.draft_forward(skip, sampling, start=start)

    def prepare_draft(self, skip: SkipSet, params: SamplingParams) -> None:
        self.channel.send("prepare_draft", self.id, skip, params)
        self.inner.prepare_draft(skip, params)

    # -- the search's forwards ------------------------------------------------------------------

    def score(self, frame: Frame, cache: KVCache, skip: SkipSet) -> torch.Tensor:
        if cache is not self.inner.cache:
            raise ConfigError("under tensor parallelism the search scores in the request's own cache only")
        self.channel.send("score", self.id, frame, skip)
        return self.inner.score(frame, cache, skip)

    def sublayer_sizes(self, frame: Frame) -> tuple[np.ndarray, torch.Tensor]:
        self.channel.send("sizes", self.id, frame)
        return sublayer_sizes(self.inner, frame)

    def cost_timer(self) -> LeadTimer:
        return LeadTimer(self)


class LeadTimer:
    """A step timer (`search.costs.Timer`) whose every timed forward runs on every rank; rank 0's
    clock is the one that counts."""

    def __init__(self, lead: LeadExecutor) -> None:
        self.channel = lead.channel
        self.id = lead.channel.new_id()
        self.channel.send("timer", self.id, lead.id)
        self.inner = timer_of(lead.inner)
        weakref.finalize(self, self.channel.forget, "timer", self.id)

    def __call__(self, n: int, context: int, skip: SkipSet) -> float:
        self.channel.send("time", self.id, n, context, skip)
        return self.inner(n, context, skip)


class ForwardTimer:
    """Seconds of one eager forward of n tokens after `context` cached slots, on a private cache
    grown as needed, with the same token ids on every rank (`search.costs.forward_timer` draws
    random ones)."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self.adapter = adapter
        self.cache: KVCache | None = None

    def __call__(self, n: int, context: int, skip: SkipSet) -> float:
        a, device = self.adapter, self.adapter.device
        if self.cache is None or self.cache.capacity < context + n:
            self.cache = None  # free the old one first
            self.cache = a.new_cache(context + n)
        frame = Frame(
            input_ids=(torch.arange(n, device=device) % a.vocab_size)[None],
            positions=torch.arange(context, context + n, device=device),
            write_start=context,
            allowed=torch.ones(n, context + n, dtype=torch.bool, device=device),
            key_positions=torch.arange(context + n, device=device),
        )
        start = time.perf_counter()
        a.forward(frame, self.cache, skip)[-1, 0].item()  # the host read waits for the device
        return time.perf_counter() - start


def timer_of(executor: Executor):
    """The executor's own step timer, or an eager forward timer."""
    return executor.cost_timer() or ForwardTimer(executor.adapter)


@torch.inference_mode()
def sublayer_sizes(executor: Executor, frame: Frame) -> tuple[np.ndarray, torch.Tensor]:
    """The executor's measured sizes of every sublayer over `frame` (`StaticExecutor.sublayer_sizes`),
    or, where it has none, the same from one eager forward that computes every sublayer and keeps
    them all (`ModelAdapter.forward_static` with `keep`), in the request's cache."""
    found = executor.sublayer_sizes(frame)
    if found is not None:
        return found
    a, cache = executor.adapter, executor.cache
    q, v = frame.allowed.shape
    cache.prepare(frame.write_start, q, v)
    sizes = torch.zeros(4, a.num_layers, device=a.device)
    weights = torch.full((q,), 1.0 / q, device=a.device)
    keep = torch.ones(2, a.num_layers, dtype=torch.bool, device=a.device)
    logits = a.forward_static(
        frame.input_ids, frame.positions, frame.allowed, frame.key_positions, cache, NO_SKIP,
        keep=keep, sizes=(weights, sizes),
    )  # fmt: skip
    return sizes.cpu().numpy(), logits


def outcome(step: Verified) -> tuple:
    """What the other ranks' same step must have produced: its accepted tokens, or its fault."""
    return ("fault", *step.fault) if step.fault is not None else tuple(step.tokens)


def agree(channel: Channel, check) -> None:
    """Run `check` on this rank; raise here if it failed on any rank (every rank calls this at the
    same point: a request one rank cannot hold must fail on rank 0 before any step starts)."""
    try:
        check()
        failure = None
    except SkipSpecError as err:
        failure = err
    found = channel.gather(None if failure is None else (type(failure).__name__, str(failure)))
    if not channel.leads:
        return
    if failure is not None:
        raise failure
    for rank, error in enumerate(found):
        if error is not None:
            from ..runtime.memory import DeviceMemoryError

            kind = DeviceMemoryError if error[0] == "DeviceMemoryError" else ConfigError
            raise kind(f"rank {rank}: {error[1]}")


class Bystander:
    """The executor a decoder gets on a rank other than 0: it refuses to run steps itself, because
    rank 0 decides every step of a tensor-parallel model."""

    tag = "bystander"
    capture_time = 0.0
    draft_calls = 0
    committed = 0
    cache = None

    def __init__(self, adapter: ModelAdapter, rank: int) -> None:
        self.adapter = adapter
        self.rank = rank

    def __getattr__(self, name: str):
        raise ConfigError(
            f"rank {self.rank} of a tensor-parallel model does not decode by itself: rank 0 decides every step. "
            "Generate on rank 0 and call skipspec.parallel.follow(model) on the other ranks, or wrap the work in "
            "skipspec.parallel.run(model, main)"
        )
