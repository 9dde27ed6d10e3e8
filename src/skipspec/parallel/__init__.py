"""Tensor parallelism: one model split over the GPUs (or CPU processes) of a host, started by torchrun.

    model, tok = skipspec.load("meta-llama/Llama-2-70b-hf", tensor_parallel=True)   # on every rank

    def main():                                   # rank 0 only
        dec = skipspec.SwiftDecoder(model)
        print(tok.decode(dec.generate(tok("Hello")["input_ids"], 64).tokens))

    skipspec.parallel.run(model, main)            # rank 0 runs main; the other ranks follow it

Each rank holds its slice of every layer (`shard`: transformers' tensor-parallel plan, or PyTorch
DTensor), so every forward is a collective. Rank 0 runs the decoder and decides everything timing
or randomness could make differ (requests, cancellation, skip sets, tree budgets, seeds); each
step its executor runs, the other ranks run too, on executors of their own built the same way,
and check that they accepted the same tokens (`lead`, `follow`, `channel`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import torch

from ..errors import ConfigError
from ..model.adapter import ModelAdapter
from ..model.sharding import Sharding, sharding_of
from ..runtime.executor import Executor
from ..runtime.factory import ExecutorSpec
from .follow import DivergedError, Report, forward_logits
from .follow import follow as _follow
from .group import Place, join
from .lead import Bystander, LeadExecutor
from .shard import shard as _shard

T = TypeVar("T")

__all__ = [
    "DivergedError",
    "Place",
    "Report",
    "Sharding",
    "executor_for",
    "follow",
    "full_logits",
    "join",
    "leads",
    "release",
    "run",
    "shard",
    "sharding_of",
]


def shard(model: torch.nn.Module, plan: str = "auto") -> torch.nn.Module:
    """Split an in-memory model (the same weights on every rank) over the torchrun group's ranks,
    in place; initialises the process group if needed (see `join`). plan: "auto", "transformers"
    or "dtensor" (`skipspec.parallel.shard`). A group of one process leaves the model as it is.
    `skipspec.load(..., tensor_parallel=True)` loads a checkpoint already sharded."""
    device = next(model.parameters()).device
    place = join(device.type)
    if device != place.device:
        raise ConfigError(
            f"rank {place.rank} shards a model on {device}: move it to its rank's device, {place.device}, first"
        )
    return model if place.world_size == 1 else _shard(model, place, plan)


def leads(model: torch.nn.Module) -> bool:
    """Whether this process decides the model's steps: rank 0 of a sharded model, or any process
    of an unsharded one."""
    s = sharding_of(model)
    return s is None or s.leads


def follow(model: torch.nn.Module) -> Report:
    """On a rank other than 0: run every step rank 0 runs on `model`, until rank 0 calls `release`."""
    s = _sharded(model)
    if s.leads:
        raise ConfigError("rank 0 leads: it generates, and the other ranks follow it")
    return _follow(model, s.link)


def release(model: torch.nn.Module) -> None:
    """On rank 0: let the other ranks' `follow` return. The model runs no more steps after it."""
    s = _sharded(model)
    if s.leads and not s.link.released:
        s.link.send("release")


def run(model: torch.nn.Module, main: Callable[[], T]) -> T | None:
    """Rank 0 (or an unsharded model's process): `main()`, then the other ranks are released, even
    if it raised. Other ranks: follow rank 0 until then, and return None."""
    s = sharding_of(model)
    if s is None:
        return main()
    if not s.leads:
        _follow(model, s.link)
        return None
    try:
        return main()
    finally:
        release(model)


def executor_for(adapter: ModelAdapter, spec: ExecutorSpec) -> Executor:
    """The executor a decoder of `adapter`'s model runs: `spec`'s own for an unsharded model; on
    rank 0 of a sharded one, one that has the other ranks run each of its steps; elsewhere one that
    refuses to run steps (rank 0 decides them)."""
    s = sharding_of(adapter.model)
    if s is None:
        return spec.build(adapter)
    if not s.leads:
        return Bystander(adapter, s.rank)
    spec = replace(spec, runtime=sharded_runtime(spec.runtime, adapter.device))
    return LeadExecutor(spec.build(adapter), s.link, spec)


def sharded_runtime(runtime, device: torch.device):
    """`runtime` with what cannot run on sharded weights turned off: packed CPU linears (they run
    their own copy of each weight, past the plan's forward that all-reduces the shards), and on a
    GPU grouped and column-major weights (they move parameters into shared storage, which DTensor
    parameters are not), compiled sublayers (TorchInductor over the plan's forwards and their
    collectives is not tested) and the skinny-linear kernel (it would run past the plan's forward
    too). Asking for one of them explicitly is an error."""
    gpu_off = ("fuse", "group_projections", "transpose_weights", "linear_kernel")
    off = ("cpu_packed_linear",) if device.type == "cpu" else gpu_off
    asked = [name for name in off if getattr(runtime, name)]
    if asked:
        raise ConfigError(f"RuntimeConfig {', '.join(f'{n}=True' for n in asked)} is not supported with tensor parallelism")
    return replace(runtime, **{name: False for name in off})


def full_logits(model: torch.nn.Module, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """The model's own forward over `ids` (1, n), no cache: the last `keep` positions' logits; on
    rank 0 of a sharded model, with every other rank running it too."""
    s = sharding_of(model)
    if s is not None:
        if not s.leads:
            raise ConfigError("only rank 0 runs forwards of a tensor-parallel model; the other ranks follow it")
        s.link.send("logits", 0, ids, keep)
    return forward_logits(model, ids, keep)


def _sharded(model: torch.nn.Module) -> Sharding:
    s = sharding_of(model)
    if s is None:
        raise ConfigError("this model is not tensor-parallel: load it with tensor_parallel=True under torchrun")
    return s
