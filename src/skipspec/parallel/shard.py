"""Split a model's layers over the ranks: transformers' tensor-parallel plan, or PyTorch DTensor.

Every supported architecture has a plan in transformers (`config.base_model_tp_plan` plus the
model class's `lm_head` entry): q/k/v and gate/up column-parallel, o/down row-parallel, the
output head column-parallel and gathered (Phi-3's fused projections gathered, so its heads are not
split). The plan installs a forward on each sharded `nn.Linear` that, under inference, runs its
local shard and all-reduces the row-parallel outputs: the adapter calls those modules as the
model does (`self_attn`, `mlp`), so the collectives happen inside the model's own code.

transformers changed the entry point between versions: `apply_tensor_parallelism(model, mesh)`
reads the model's plan itself in 5.17; from 5.2x it takes the plan expanded to one entry per
module and parameter (`apply_tensor_parallelism(model, mesh, plan)`). Both are supported.

For an architecture without a plan, `plan="dtensor"` shards q/k/v/gate/up column-wise and o/down
row-wise with PyTorch's own `parallelize_module` (the embeddings and the head stay whole).
"""

from __future__ import annotations

import hashlib
import inspect

import torch
import torch.distributed as dist

from ..errors import ConfigError, UnsupportedArchitectureError
from ..model.sharding import Sharding, attach, sharding_of
from .channel import Channel
from .group import Place

PLANS = ("auto", "transformers", "dtensor")
#: The DTensor plan: per sublayer module, its column-parallel and its row-parallel projections.
_PROJECTIONS = {
    "self_attn": (("q_proj", "k_proj", "v_proj"), ("o_proj",)),
    "mlp": (("gate_proj", "up_proj"), ("down_proj",)),
}


def has_plan(config) -> bool:
    """Whether transformers has a tensor-parallel plan for this architecture."""
    return bool(getattr(config, "base_model_tp_plan", None))


def splits_heads(plan: dict[str, str]) -> bool:
    """Whether a plan splits the attention heads: it shards the key projection by columns, not
    gathered (transformers' own test, `get_kv_heads_per_rank`)."""
    return any(k.rsplit(".", 1)[-1] in ("k_proj", "qkv_proj") and v == "colwise" for k, v in plan.items())


def check_divisible(config, world_size: int, heads_split: bool) -> None:
    """Raise ConfigError, before any weight is read, when the heads cannot be split evenly."""
    if not heads_split or world_size == 1:
        return
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    if heads % world_size or kv % world_size:
        fits = [n for n in range(1, kv + 1) if kv % n == 0 and heads % n == 0]
        raise ConfigError(
            f"tensor parallelism over {world_size} processes splits the attention heads, and this model's "
            f"{heads} attention and {kv} key/value heads do not divide by {world_size}: launch "
            f"{', '.join(map(str, fits))} processes (torchrun --nproc-per-node)"
        )


def shard(model: torch.nn.Module, place: Place, plan: str = "auto") -> torch.nn.Module:
    """Split `model` (the same weights on every rank, on `place.device`) over the ranks, in place.

    plan: "auto" (transformers' plan when the architecture has one, else DTensor), "transformers"
    or "dtensor". Every rank calls this at the same point.
    """
    if plan not in PLANS:
        raise ConfigError(f"plan must be one of {PLANS}, got {plan!r}")
    if sharding_of(model) is not None:
        raise ConfigError("this model is already sharded")
    kind = ("transformers" if has_plan(model.config) else "dtensor") if plan == "auto" else plan
    if kind == "transformers" and not has_plan(model.config):
        raise UnsupportedArchitectureError(f"transformers has no tensor-parallel plan for {model.config.model_type!r}")
    heads_split = splits_heads(model.tp_plan) if kind == "transformers" else True
    check_divisible(model.config, place.world_size, heads_split)
    if not _on_meta(model):
        _check_same_weights(model)
    mesh = dist.init_device_mesh(place.device.type, (place.world_size,), mesh_dim_names=("tp",))
    if kind == "transformers":
        try:
            apply_transformers_plan(model, mesh)
        except ValueError as err:  # e.g. a gathered output that does not divide by the ranks
            raise ConfigError(f"transformers' tensor-parallel plan does not fit this model: {err}") from err
    else:
        apply_dtensor_plan(model, mesh)
    adopt(model, place, kind, heads_split)
    return model


def adopt(model: torch.nn.Module, place: Place, kind: str, heads_split: bool) -> None:
    """Attach the `Sharding` of a model sharded over `place`'s group, with its command channel."""
    kv = getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads
    tensors = None if place.device.type == "cpu" else dist.group.WORLD
    channel = Channel(place.rank, place.world_size, place.device, tensors)
    kv_heads = kv // place.world_size if heads_split else kv
    attach(model, Sharding(place.rank, place.world_size, kv_heads, kind, channel))


def apply_transformers_plan(model: torch.nn.Module, mesh) -> None:
    from transformers.distributed import tensor_parallel as tp

    if "tp_plan" in inspect.signature(tp.apply_tensor_parallelism).parameters:
        tp.apply_tensor_parallelism(model, mesh, expanded_plan(model, model.tp_plan))
    else:  # 5.17: the model's own plan, read by transformers
        tp.apply_tensor_parallelism(model, mesh)


def expanded_plan(model: torch.nn.Module, plan: dict[str, str]) -> dict[str, str]:
    """The plan with one entry per module and parameter it names (layer numbers for its `*`), each
    module's parameters before the module: what 5.2x's `apply_tensor_parallelism` takes (the
    model's `_resolve_parallel_plans` builds the same from a `DistributedConfig`)."""
    from transformers.distributed.tensor_parallel import replace_layer_number_by_wildcard as generic

    out: dict[str, str] = {}
    for name, module in model.named_modules():
        style = plan.get(generic(name)) if name else None
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            found = plan.get(generic(full)) or style
            if found is not None:
                out[full] = found
        if style is not None:
            out[name] = style
    return out


def apply_dtensor_plan(model: torch.nn.Module, mesh) -> None:
    """q/k/v/gate/up column-wise, o/down row-wise, with PyTorch's `parallelize_module`."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {}
    for i, layer in enumerate(model.model.layers):
        for owner, (columns, rows) in _PROJECTIONS.items():
            names = {n for n, _ in getattr(layer, owner).named_children()}
            missing = [p for p in columns + rows if p not in names]
            if missing:
                raise UnsupportedArchitectureError(
                    f"no tensor-parallel plan for {model.config.model_type!r}: its layer {i} {owner} has no "
                    f"{', '.join(missing)} (skipspec's DTensor plan shards separate projections only)"
                )
            plan |= {f"model.layers.{i}.{owner}.{p}": ColwiseParallel() for p in columns}
            plan |= {f"model.layers.{i}.{owner}.{p}": RowwiseParallel() for p in rows}
    parallelize_module(model, mesh, plan)


def _on_meta(model: torch.nn.Module) -> bool:
    return next(model.parameters()).device.type == "meta"


def _check_same_weights(model: torch.nn.Module) -> None:
    """Raise unless every rank holds the same weights (a sample of them): each rank keeps its slice
    of its own copy, and slices of different models would add up to garbage."""
    h = hashlib.sha256()
    for p in (model.get_input_embeddings().weight, next(model.model.layers[-1].parameters())):
        flat = p.detach().reshape(-1)
        h.update(flat[:: max(1, flat.numel() // 1024)].to("cpu", torch.float32).numpy().tobytes())
    digests: list = [None] * dist.get_world_size()
    dist.all_gather_object(digests, h.hexdigest())
    if len(set(digests)) > 1:
        raise ConfigError(
            "the ranks hold different weights: build or load the same model on every rank (same checkpoint, "
            "or the same seed) before sharding it"
        )
