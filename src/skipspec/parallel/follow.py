"""The other ranks: run every step rank 0 runs, until rank 0 releases them.

`follow(model)` is all a rank other than 0 does with a sharded model. It builds, from rank 0's
`ExecutorSpec`, an executor for each one rank 0's decoders build, and replays every executor call
rank 0 makes on it (`lead.LeadExecutor`), with the same arguments: the same forwards, so the
collectives inside them meet, and the same acceptance, so its KV cache stays rank 0's twin. After
each step it compares its own accepted tokens with rank 0's (they ride along on rank 0's next
command) and stops with an error if they differ, rather than decode on from another state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..model.adapter import ModelAdapter
from ..runtime.executor import Executor, Verified
from .channel import Channel, Command
from .lead import agree, outcome, sublayer_sizes, timer_of


class DivergedError(RuntimeError):
    """A rank's step accepted other tokens than rank 0's: the ranks no longer hold the same state."""


@dataclass
class Report:
    """What a follower did: commands run, steps whose tokens it checked against rank 0's, and the
    tokens its own steps accepted for the latest requests (prefill token first), newest last."""

    commands: int = 0
    checked: int = 0
    requests: deque = field(default_factory=lambda: deque(maxlen=64))


class _Mirror:
    """One executor of rank 0's, rebuilt here, and what its latest steps produced."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.steps: Iterator[Verified] | None = None  # an open `plain_steps`
        self.last: tuple | None = None
        self.tokens: list[int] = []


def follow(model: torch.nn.Module, channel: Channel) -> Report:
    """Run rank 0's commands for `model` until it sends "release"; what was done."""
    report = Report()
    mirrors: dict[int, _Mirror] = {}
    timers: dict[int, object] = {}
    while True:
        command = channel.receive()
        report.commands += 1
        if command.expect is not None:
            _check(mirrors, command.expect, channel.rank)
            report.checked += 1
        for kind, ident in command.forget:
            (mirrors if kind == "executor" else timers).pop(ident, None)
        if command.op == "release":
            return report
        _run(command, model, mirrors.get(command.target), mirrors, timers, channel, report)


def _run(command: Command, model, mirror: _Mirror | None, mirrors: dict, timers: dict, channel: Channel, report) -> None:
    op, args = command.op, command.args
    if op == "executor":
        (spec,) = args
        mirrors[command.target] = _Mirror(spec.build(ModelAdapter(model)))
        return
    if op == "timer":
        timers[command.target] = timer_of(mirrors[args[0]].executor)
        return
    if op == "time":
        timers[command.target](*args)
        return
    if op == "logits":
        forward_logits(model, *args)
        return
    ex = mirror.executor
    if op == "check":
        agree(channel, lambda: ex.check(*args))
    elif op == "warmup":
        ex.warmup(*args)
    elif op == "prefill":
        mirror.steps = None  # a new request: rank 0 runs no more of the last one's plain steps
        mirror.last = (ex.prefill(*args),)
        mirror.tokens = list(mirror.last)
        report.requests.append(mirror.tokens)
    elif op == "verify":
        _took(mirror, ex.verify(*args))
    elif op == "plain":
        mirror.steps = ex.plain_steps(*args)
    elif op == "next":
        if mirror.steps is None:
            raise ValueError("rank 0 advanced plain steps that were never opened here")
        step = next(mirror.steps, None)
        if step is not None:
            _took(mirror, step)
    elif op == "draft":
        skip, sampling, start = args
        ex.draft_forward(skip, sampling, start=start)
    elif op == "prepare_draft":
        ex.prepare_draft(*args)
    elif op == "score":
        frame, skip = args
        ex.score(frame, ex.cache, skip)
    elif op == "sizes":
        sublayer_sizes(ex, *args)
    else:
        raise ValueError(f"unknown tensor-parallel command {op!r}: are all ranks running the same skipspec version?")


def _took(mirror: _Mirror, step: Verified) -> None:
    mirror.last = outcome(step)
    if step.fault is None:
        mirror.tokens.extend(step.tokens)


def _check(mirrors: dict[int, _Mirror], expect: tuple, rank: int) -> None:
    target, tokens = expect
    mirror = mirrors.get(target)
    mine = mirror.last if mirror is not None else None
    if mine != tokens:
        raise DivergedError(
            f"rank {rank}'s step accepted {mine}, rank 0's {tokens}: the ranks' forwards no longer agree "
            "(different weights, or a collective that does not give every rank the same result)"
        )


@torch.inference_mode()
def forward_logits(model: torch.nn.Module, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """The model's own forward over `ids` (no cache): the last `keep` positions' logits."""
    return model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
