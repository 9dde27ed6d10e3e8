"""What the adapter needs to know about a model split over the processes of a tensor-parallel group.

`skipspec.parallel` shards a model and attaches a `Sharding` to it; everything below the parallel
layer reads it from here, so that the model layer never imports the process-group machinery.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_ATTRIBUTE = "_skipspec_sharding"


@dataclass(frozen=True)
class Sharding:
    """How one model's layers are split over the processes of a tensor-parallel group.

    rank, world_size: this process's place in the group (rank 0 decides, the others follow).
    kv_heads: key/value heads this process's attention modules hold: the KV cache's width.
    plan: "transformers" (the architecture's own tensor-parallel plan) or "dtensor" (skipspec's
        plan of PyTorch DTensor styles, for an architecture without one).
    link: the group's command channel (`skipspec.parallel.channel.Channel`), through which rank 0
        has the other ranks run every step it runs. Opaque here.
    """

    rank: int
    world_size: int
    kv_heads: int
    plan: str
    link: object = None

    @property
    def leads(self) -> bool:
        return self.rank == 0


def sharding_of(model: torch.nn.Module) -> Sharding | None:
    """The model's `Sharding`, or None when it runs in one process."""
    return getattr(model, _ATTRIBUTE, None)


def attach(model: torch.nn.Module, sharding: Sharding) -> None:
    # A plain attribute, not a submodule or buffer: it is not part of the model's state.
    object.__setattr__(model, _ATTRIBUTE, sharding)
