"""How the fast path stores the weights a decode step streams: grouped projections, GEMV layout.

A decode step reads every weight once per token, so on a GPU its time is how fast the GEMVs
stream weights. Two re-layouts help, both done in place on the model's own parameters, keeping
their names, shapes, values and objects (only the storage under them changes) and no extra memory:

- Grouped projections: q/k/v (and gate/up) of a layer move into one matrix, each projection's
  weight a view of its rows. The fast path's sublayers run one GEMV per group
  (`skipspec.runtime.layers`); the model's own forward still runs three and gets the same values.
- Transposed storage: each weight matrix is stored column-major (`w.t()` contiguous). cuBLAS
  streams a bf16 4096x4096 weight at 72% of copy bandwidth in `nn.Linear`'s row-major layout and
  at 80-95% stored this way (H100, `scripts/gpu_floor_probe.py`).

What a user can notice: grouped projections share one storage and column-major matrices are
strided, both of which safetensors (so `save_pretrained`) refuses; `unpack_weights(model)` gives
every parameter its own contiguous storage back. In-place updates of a packed weight
(`p.data.copy_`, `p.mul_`) reach the fast path; replacing `p.data` does not reach a decoder built
before (its stand-in layers hold the packed storage): build a new decoder after.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

# (submodule of a decoder layer, projections that read the same input, in the order the model calls them)
GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


def projection_groups(layer: nn.Module) -> Iterator[tuple[str, tuple[str, ...], tuple[nn.Linear, ...]]]:
    """The groups of `layer` that can share one GEMV: plain `nn.Linear`s (not quantized subclasses)
    with one input size, dtype and device, all with a bias or none (Phi-3's are already fused)."""
    for parent_name, names in GROUPS:
        parent = getattr(layer, parent_name, None)
        linears = tuple(getattr(parent, n, None) for n in names)
        if not all(type(m) is nn.Linear for m in linears):
            continue
        w = [m.weight for m in linears]
        if len({(t.shape[1], t.dtype, t.device) for t in w}) != 1 or w[0].device.type == "meta":
            continue
        if len({m.bias is None for m in linears}) != 1:
            continue
        yield parent_name, names, linears


def joined_view(parts: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The tensor whose consecutive row blocks are `parts`, if they lie so in one storage; else None."""
    first = parts[0]
    offset = first.storage_offset()
    for p in parts:
        same_storage = p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        if not same_storage or p.stride() != first.stride() or p.shape[1:] != first.shape[1:]:
            return None
        if p.storage_offset() != offset:
            return None
        offset += p.shape[0] * first.stride(0)
    rows = sum(p.shape[0] for p in parts)
    return first.as_strided((rows, *first.shape[1:]), first.stride(), first.storage_offset())


def is_transposed(w: torch.Tensor) -> bool:
    """Whether a matrix is stored column-major (its rows are strided, its columns contiguous)."""
    return w.dim() == 2 and w.stride(0) == 1 and w.stride(1) >= w.shape[0]


def _store_together(params: Sequence[nn.Parameter], transpose: bool) -> None:
    """Point `params` at consecutive row blocks of one new storage (column-major if `transpose`)."""
    joined = joined_view(params)
    if joined is not None and (not transpose or joined.dim() == 1 or is_transposed(joined)):
        return  # already stored so
    whole = torch.cat([p.data for p in params])
    if transpose and whole.dim() == 2:
        whole = whole.t().contiguous().t()
    start = 0
    for p in params:
        p.data = whole[start : start + p.shape[0]]
        start += p.shape[0]


@torch.no_grad()
def pack_weights(model: nn.Module, layers: Sequence[nn.Module], *, group: bool, transpose: bool) -> bool:
    """Re-lay out the weights of `layers` (and the output head) in place; values unchanged, idempotent.

    Each re-layout briefly needs two copies of one group's weights. If the device runs out of memory
    for that, packing stops with a warning and returns False: what was packed stays packed, the rest
    as it was, all with the same values (the fast path then runs those layers' own projections).
    """
    try:
        for layer in layers:
            grouped: set[int] = set()
            if group:
                for _, _, linears in projection_groups(layer):
                    _store_together([m.weight for m in linears], transpose)
                    if linears[0].bias is not None:
                        _store_together([m.bias for m in linears], False)
                    grouped.update(id(m) for m in linears)
            if transpose:
                for m in layer.modules():
                    if type(m) is nn.Linear and id(m) not in grouped:
                        _store_together([m.weight], True)
        head = model.get_output_embeddings()
        if transpose and type(head) is nn.Linear:
            _store_together([head.weight], True)
    except torch.OutOfMemoryError:
        warnings.warn(
            "skipspec: no device memory left to re-lay out the weights for the fast path (it needs a second "
            "copy of one projection group at a time); the rest keeps its layout and runs slower",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


def stored_together(linears: Sequence[nn.Linear]) -> bool:
    """Whether a group's weights (and biases) lie as one matrix (vector), as `pack_weights` leaves them."""
    biases = [m.bias for m in linears]
    joined_bias = biases[0] is None or joined_view(biases) is not None
    return joined_view([m.weight for m in linears]) is not None and joined_bias


@torch.no_grad()
def unpack_weights(model: nn.Module) -> None:
    """Give every parameter its own contiguous storage again (e.g. before `save_pretrained`).

    A decoder built before keeps the packed storage alive (its stand-in layers read it); drop it,
    or expect the packed weights to take memory a second time.
    """
    for p in model.parameters():  # tied parameters are one object, listed once
        p.data = p.data.clone(memory_format=torch.contiguous_format)
