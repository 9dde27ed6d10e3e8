"""Rank 0 -> every other rank: the steps to run, as small commands.

A `Command` names an operation, the object it is for (an executor or a step timer, by id) and its
arguments. Host values travel pickled, in one broadcast over a gloo group of their own (with a
long timeout: between requests the other ranks wait here for as long as rank 0 is idle); tensors
on a GPU travel after it, each in one broadcast over the model's own (NCCL) group, so that a
drafter's tree on the device never comes back to the host to be sent. CPU tensors go pickled.

Two things ride along on every command, so that they cost no message of their own: the ids of
objects rank 0 dropped since the last command (the other ranks drop theirs), and the tokens rank
0's last step accepted (the other ranks check that their own step accepted the same).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError

#: How long the other ranks wait for rank 0's next command (a server may idle for weeks).
IDLE_TIMEOUT = timedelta(days=365)


@dataclass(frozen=True)
class Remote:
    """Where a device tensor was in a command's arguments: the `index`-th broadcast after the header."""

    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class Command:
    """op: what to run; target: the id of the executor or timer it is for (0: none); args: its arguments.

    forget: (kind, id) of objects rank 0 no longer holds. expect: (executor id, tokens) of rank 0's
    last step, or None.
    """

    op: str
    target: int
    args: tuple
    forget: tuple[tuple[str, int], ...] = ()
    expect: tuple[int, tuple] | None = None


class Channel:
    """The command channel of one sharded model (see the module docstring).

    rank 0 `send`s, every other rank `receive`s, in the same order. Not thread-safe: one thread
    at a time drives a model's steps (a decoder is not thread-safe either).
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, tensors: dist.ProcessGroup | None) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        # A group of its own: collective, so every rank creates it at the same point (sharding).
        self.commands = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
        self.tensors = tensors  # None: the default group
        self.released = False
        self._ids = 0
        self._forget: list[tuple[str, int]] = []
        self._expect: tuple[int, tuple] | None = None

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def new_id(self) -> int:
        self._ids += 1
        return self._ids

    def forget(self, kind: str, ident: int) -> None:
        """Queue `ident` for the other ranks to drop with the next command (safe from a finalizer:
        it only appends)."""
        self._forget.append((kind, ident))

    def expect(self, target: int, tokens: tuple) -> None:
        self._expect = (target, tokens)

    def send(self, op: str, target: int = 0, *args) -> None:
        """Rank 0: have every other rank run `op` on `target` with `args` (they run it as rank 0 does)."""
        if self.released:
            raise ConfigError("the other ranks of this tensor-parallel model were released: it can run no more steps")
        remote: list[torch.Tensor] = []
        forget, self._forget = tuple(self._forget), []
        command = Command(op, target, _strip(args, remote), forget, self._expect)
        self._expect = None
        dist.broadcast_object_list([command], src=0, group=self.commands)
        for t in remote:
            dist.broadcast(t.contiguous(), src=0, group=self.tensors)
        if op == "release":
            self.released = True

    def receive(self) -> Command:
        """Every other rank: the next command, its device tensors in place."""
        box: list = [None]
        dist.broadcast_object_list(box, src=0, group=self.commands)
        command: Command = box[0]
        tensors = []
        for r in _remotes(command.args):
            t = torch.empty(r.shape, dtype=r.dtype, device=self.device)
            dist.broadcast(t, src=0, group=self.tensors)
            tensors.append(t)
        return dataclasses.replace(command, args=_fill(command.args, tensors)) if tensors else command

    def gather(self, value) -> list:
        """Every rank's `value`, on every rank (a collective: each rank calls it at the same point)."""
        out: list = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.commands)
        return out


def _strip(value, remote: list[torch.Tensor]):
    """`value` with every non-CPU tensor replaced by a `Remote` (appended to `remote`)."""

    def swap(t: torch.Tensor):
        if t.device.type == "cpu":
            return t
        remote.append(t)
        return Remote(len(remote) - 1, tuple(t.shape), t.dtype)

    return _mapped(value, torch.Tensor, swap)


def _remotes(value) -> list[Remote]:
    """The `Remote`s in `value`, in index order."""
    found: list[Remote] = []
    _mapped(value, Remote, lambda r: found.append(r) or r)
    return sorted(found, key=lambda r: r.index)


def _fill(value, tensors: list[torch.Tensor]):
    """Inverse of `_strip`: each `Remote` replaced by its received tensor."""
    return _mapped(value, Remote, lambda r: tensors[r.index])


def _mapped(value, kind: type, fn):
    """`value` with `fn` applied to every instance of `kind` inside tuples, lists and dataclasses;
    the same object wherever nothing changed (configs are not rebuilt, nor re-validated).

    >>> _mapped((1, [2, "a"]), int, lambda v: v * 10)
    (10, [20, 'a'])
    """
    if isinstance(value, kind):
        return fn(value)
    if isinstance(value, (tuple, list)):
        items = [_mapped(v, kind, fn) for v in value]
        return type(value)(items) if any(a is not b for a, b in zip(items, value)) else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new = _mapped(old, kind, fn)
            if new is not old:
                changed[f.name] = new
        return dataclasses.replace(value, **changed) if changed else value
    return value
