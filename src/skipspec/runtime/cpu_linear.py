"""The model's linear layers on the CPU with prepacked oneDNN weights, for multi-token forwards.

On a CPU, a forward of a few tokens is what makes speculation lose: PyTorch's float32 `F.linear`
(MKL sgemm) takes about as long for 2 rows as for 8 and 2-3x as long as for one row, so a verify
step of 8 tree nodes costs 2.7-3.3 plain steps. oneDNN's inner product on a weight reordered once
into its blocked layout (what TorchInductor's CPU weight freezing does) runs 2..64 rows at
0.2-0.7x `F.linear`'s time on Qwen2.5-1.5B's matrices and both models' output heads, 0.4-0.9x
on SmolLM2-135M's small ones; a whole SmolLM2 forward of 2..64 tokens at 0.5-0.75x, so that 8
tokens cost 0.8-1.1 plain steps instead of 1.35-1.55 (2 threads, `scripts/cpu_linear_probe.py`).

`PackedLinear` stands in for one `nn.Linear`: rows >= 2 run `torch.ops.mkldnn._linear_pointwise`
on a packed copy of the weight (one copy serves every row count: the layout is picked for a
batch of `PACK_ROWS` rows and oneDNN runs any other count on it), a single row runs the model's
own `F.linear` on the model's own weight (MKL's GEMV, faster there, and single-threaded on small
matrices), except in the output head, where the packed weight is faster for one row too.

`packed_sublayers(adapter)` builds stand-ins for the model's decoder layers and output head
(shallow copies sharing every parameter and untouched submodule, as `skipspec.runtime.layers`
does) and returns them as a `Sublayers` for the adapter to run. The model object itself is never
changed: its parameters keep their tensors, values and layout, so it trains, saves and runs as
before.

Memory: one packed copy of every linear weight of the decoder layers and of the output head,
i.e. about the model's size again minus the input embedding (SmolLM2-135M: +0.51 GiB with its
tied head; Qwen2.5-1.5B: about +5.8 GiB), shared by every decoder built on the model and freed
with the last of them. The model's own weights stay, as the one-row path and the user's model
read them. (The blocked layout cannot be a strided view, so the packed copy cannot double as the
model's parameter; oneDNN on the model's own row-major weight needs no copy but is 1.1-1.7x
slower than on the packed one: `scripts/cpu_linear_probe.py --options`, "dnn-plain".)

Updates: the packed copy follows the model's weight as long as PyTorch can see the change: an
in-place update through the parameter (`load_state_dict`, `p.copy_` under `no_grad`) bumps its
version counter and a replaced `p.data` changes its address; either repacks on the next call.
An update through `p.data` in place (`p.data.copy_`) is invisible: build a new decoder after one.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..model.adapter import ModelAdapter, Sublayers, final_logits
from .layers import _with_children

#: The batch size oneDNN picks the weight layout for. Any row count runs on it; 4 to 64 give the
#: same speed over 1..64 rows, 1 gives another layout, 1.1-1.8x slower for 2..64 rows.
PACK_ROWS = 64

#: Fewer rows than this run the model's own F.linear. For one row the packed weight is faster on an
#: idle machine with 2 threads (0.55-0.75x on all but the smallest matrices; a one-token SmolLM2
#: forward 0.7-0.8x), but oneDNN splits every matrix over the threads where MKL's GEMV keeps small
#: ones on one, and where the cores are shared with other processes each split waits for the
#: other thread to be scheduled: the same forward then took 1.4-2.3x as long. So one row (plain
#: decoding, drafts) keeps F.linear; `packed_sublayers(adapter, min_rows=1)` where the cores are the
#: process's own.
MIN_ROWS = 2

#: The same for the output head, a matrix large enough for its one row to pay for the split:
#: 0.45-0.6x F.linear's time on SmolLM2's and Qwen2.5's heads with 2 threads (0.7x on shared cores).
HEAD_MIN_ROWS = 1


def _ops_present() -> bool:
    mkldnn = torch.ops.mkldnn
    return hasattr(mkldnn, "_linear_pointwise") and hasattr(mkldnn, "_reorder_linear_weight")


@functools.cache
def packed_linear_available() -> bool:
    """Whether this PyTorch build runs oneDNN's packed linear on the CPU (checked once, on a tiny case)."""
    if not torch.backends.mkldnn.is_available() or not _ops_present():
        return False
    try:
        with torch.inference_mode():
            gen = torch.Generator().manual_seed(0)
            w = torch.randn(24, 40, generator=gen)
            b = torch.randn(24, generator=gen)
            x = torch.randn(3, 40, generator=gen)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS)
            y = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
            return bool(torch.allclose(y, F.linear(x, w, b), rtol=1e-4, atol=1e-4))
    except (RuntimeError, NotImplementedError):
        return False


def packable(linear: nn.Module) -> bool:
    """A plain float32 `nn.Linear` on the CPU (not a quantized or otherwise subclassed one)."""
    if type(linear) is not nn.Linear:
        return False
    w = linear.weight
    return w.device.type == "cpu" and w.dtype == torch.float32 and w.layout == torch.strided


def _identity(w: torch.Tensor) -> tuple[int, int | None]:
    """What changes when a weight is replaced or updated in place (an inference tensor, made under
    `torch.inference_mode`, counts no versions: only its replacement is seen)."""
    return w.data_ptr(), None if w.is_inference() else w._version


class _Pack:
    """The packed copy of one linear's weight, shared by all its stand-ins (two decoders on one
    model pack it once) and freed with the last of them."""

    def __init__(self, linear: nn.Linear, rows: int) -> None:
        self.linear, self.rows = linear, rows
        self.key: tuple | None = None
        self.weight: torch.Tensor | None = None

    def current(self) -> torch.Tensor | None:
        """The packed weight of the linear's weight as it is now (None: it is no longer packable)."""
        w = self.linear.weight
        key = _identity(w)
        if key != self.key:
            self.weight = None  # drop a stale copy before making the new one
            if packable(self.linear):
                with torch.no_grad():
                    self.weight = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), self.rows)
            self.key = key
        return self.weight


_PACKS: weakref.WeakValueDictionary[tuple[int, int], _Pack] = weakref.WeakValueDictionary()


def _pack_of(linear: nn.Linear, rows: int) -> _Pack:
    # A live pack holds its linear, so the linear's id cannot have been reused by another.
    pack = _PACKS.get((id(linear), rows))
    if pack is None:
        pack = _PACKS[id(linear), rows] = _Pack(linear, rows)
    return pack


class PackedLinear(nn.Module):
    """Stands in for an `nn.Linear` on the CPU: `min_rows` rows or more through oneDNN with a packed
    copy of its weight, fewer through the linear's own `F.linear`. The wrapped linear is only
    read, never changed."""

    def __init__(self, linear: nn.Linear, pack_rows: int = PACK_ROWS, min_rows: int = MIN_ROWS) -> None:
        super().__init__()
        # Not a submodule: the stand-in's state_dict and parameters() must not list the model's weights twice.
        object.__setattr__(self, "linear", linear)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.pack_rows, self.min_rows = pack_rows, min_rows
        self._pack = _pack_of(linear, pack_rows)
        self._pack.current()  # pack now, not in the first step

    def packed_weight(self) -> torch.Tensor | None:
        """The packed weight, repacked first if the linear's weight changed (see the module docstring);
        None if the weight is no longer a float32 CPU tensor."""
        return self._pack.current()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        linear = self.linear
        # The packed op has no backward: with grad enabled (never in skipspec's forwards) F.linear runs.
        if x.numel() >= self.min_rows * x.shape[-1] and x.dtype == torch.float32 and not torch.is_grad_enabled():
            packed = self.packed_weight()
            if packed is not None:
                return torch.ops.mkldnn._linear_pointwise(x, packed, linear.bias, "none", [], "")
        return F.linear(x, linear.weight, linear.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"pack_rows={self.pack_rows}, min_rows={self.min_rows}"
        )


def _swapped(module: nn.Module, make) -> nn.Module:
    """`module` with every packable linear inside it replaced by `make(linear)`, as shallow copies
    (see `layers._with_children`); `module` itself when there is none."""
    if packable(module):
        return make(module)
    children = {}
    for name, child in module._modules.items():
        if child is None:
            continue
        twin = _swapped(child, make)
        if twin is not child:
            children[name] = twin
    return _with_children(module, children) if children else module


def packed_layers(
    layers: Sequence[nn.Module], pack_rows: int = PACK_ROWS, min_rows: int = MIN_ROWS
) -> tuple[nn.Module, ...]:
    """Stand-ins for `layers` whose linears are `PackedLinear`s; a layer without one is returned as is."""
    make = functools.partial(PackedLinear, pack_rows=pack_rows, min_rows=min_rows)
    return tuple(_swapped(layer, make) for layer in layers)


class PackedFinal:
    """`final_logits` with the output head run by a `PackedLinear` (the `Sublayers.final` slot)."""

    def __init__(self, head: PackedLinear) -> None:
        self.head = head

    def __call__(self, norm, lm_head, hidden, delta, softcap):
        return final_logits(norm, self.head, hidden, delta, softcap)


def packed_sublayers(
    adapter: ModelAdapter, pack_rows: int = PACK_ROWS, min_rows: int = MIN_ROWS, head_min_rows: int = HEAD_MIN_ROWS
) -> Sublayers:
    """How the adapter runs the model with packed linears (see the module docstring)."""
    layers = packed_layers(adapter.layers, pack_rows, min_rows)
    head = adapter.model.lm_head
    final = PackedFinal(PackedLinear(head, pack_rows, head_min_rows)) if packable(head) else final_logits
    return Sublayers(layers=layers, final=final)


def packed_linears(sublayers: Sublayers) -> list[PackedLinear]:
    """The `PackedLinear`s of sublayers built by `packed_sublayers` (for tests and accounting)."""
    found = [m for layer in sublayers.layers or () for m in layer.modules() if isinstance(m, PackedLinear)]
    if isinstance(sublayers.final, PackedFinal):
        found.append(sublayers.final.head)
    return found
