"""This process's place in a torchrun group, and the default process group behind it.

torchrun starts one process per rank with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT set. `join` initialises torch.distributed's default process group from them when
none exists yet (gloo for a model on the CPU, NCCL on GPUs) and uses the existing one otherwise,
so it may be called any number of times in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..loading import resolve_device

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = (
    "start one process per GPU (or CPU rank) with torchrun, e.g. "
    "`torchrun --nproc-per-node 2 --no-python skipspec generate --tensor-parallel ...` or "
    "`torchrun --nproc-per-node 2 your_script.py`"
)
#: How long a rank waits for the others in one collective. Loading a large model skews ranks by
#: minutes; waiting for rank 0's next request (a server's idle time) uses the channel's own group.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Place:
    """rank, world_size: in the default process group; local_rank: on this host; device: this rank's."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def leads(self) -> bool:
        return self.rank == 0


def join(device: str | torch.device | None = None) -> Place:
    """This process's place in the torchrun group; the default process group is initialised first
    if there is none (see the module docstring).

    device: "cpu", "cuda" (this rank's GPU: cuda:LOCAL_RANK) or None (cuda when available).
    """
    if not dist.is_available():
        raise ConfigError("tensor parallelism needs torch.distributed, which this PyTorch build lacks")
    kind = _device_kind(device)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
        if missing:
            raise ConfigError(
                f"tensor parallelism needs processes started by torchrun ({', '.join(missing)} not set): {LAUNCH_HINT}"
            )
        rank, world, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    place = Place(rank, world, local, torch.device("cuda", local) if kind == "cuda" else torch.device("cpu"))
    if kind == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local} has no GPU: this host has {torch.cuda.device_count()}; {LAUNCH_HINT}")
        torch.cuda.set_device(place.device)
    if not dist.is_initialized():
        if kind == "cuda":
            dist.init_process_group("nccl", device_id=place.device, timeout=COLLECTIVE_TIMEOUT)
        else:
            dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return place


def _device_kind(device: str | torch.device | None) -> str:
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is not None:
        raise ConfigError(
            f"under tensor parallelism each process uses the GPU of its local rank: pass device 'cuda', not {device!r}"
        )
    return dev.type
