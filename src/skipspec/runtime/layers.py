"""Stand-ins for the model's decoder layers on the fast path: same weights, fewer and faster kernels.

A stand-in is a shallow copy of a decoder layer (sharing every parameter, buffer and untouched
submodule) with some children swapped:

- grouped projections: the first projection of a group (q_proj, gate_proj) runs one GEMV with the
  group's joined weight (laid out by `skipspec.runtime.weights.pack_weights`); the later ones
  (k_proj, v_proj, up_proj) return their part of its output.
- an attention implementation of the fast path's own: the stand-in attention module reads a copy
  of the model config with another `_attn_implementation`, so the model itself is left as it is.
- skipspec's matrix-vector kernel: every other plain `nn.Linear` of the attention and MLP modules
  becomes a `SkinnyLinear`, and grouped projections call the same op.

The model's own layers never change: prefill, the eager path and the user's own calls run them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .skinny_linear import SkinnyLinear, serves
from .weights import joined_view, projection_groups, stored_together


class _Outputs:
    """The last grouped GEMV's input and its per-projection parts, for the group's later members.

    One object per runtime, shared by every layer: a compiled sublayer guards on its identity, so
    one per layer would compile once per layer.
    """

    def __init__(self) -> None:
        self.input: torch.Tensor | None = None
        self.parts: tuple[torch.Tensor, ...] | None = None


class GroupedProjection(nn.Module):
    """Stands in for a group's first projection: one GEMV with the group's joined weight."""

    def __init__(self, linears: Sequence[nn.Linear], outputs: _Outputs, kernel: bool = False) -> None:
        super().__init__()
        if not stored_together(linears):
            raise ValueError("the group's weights are not stored together (pack_weights first)")
        weight = joined_view([m.weight for m in linears])
        bias = None if linears[0].bias is None else joined_view([m.bias for m in linears])
        # Parameters, not plain attributes: a compiled region takes them as inputs instead of
        # specialising on each layer's tensors.
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.splits = tuple(m.out_features for m in linears)
        self.outputs = outputs
        self.kernel = kernel  # run skipspec's skinny-linear op instead of F.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        product = torch.ops.skipspec.skinny_linear if self.kernel else F.linear
        parts = product(x, self.weight, self.bias).split(self.splits, dim=-1)
        self.outputs.input, self.outputs.parts = x, parts
        return parts[0]


class GroupMember(nn.Module):
    """Stands in for a later projection of a group: its part of the grouped GEMV's output.

    Called on any other input than the group's last one (a model that calls its projections in
    another order), it runs its own projection, so a surprise costs speed, never correctness.
    """

    def __init__(self, linear: nn.Linear, index: int, last: bool, outputs: _Outputs) -> None:
        super().__init__()
        self.linear, self.index, self.last, self.outputs = linear, index, last, outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.outputs
        if out.input is not x or out.parts is None:
            return self.linear(x)
        part = out.parts[self.index]
        if self.last:  # hold no activations between steps
            out.input = out.parts = None
        return part


def stand_in_head(head: nn.Module, linear_kernel: bool) -> nn.Module:
    """The output head the fast path's final step runs: the model's, or a `SkinnyLinear` of it."""
    return SkinnyLinear(head) if linear_kernel and serves(head) else head


def _with_children(module: nn.Module, children: dict[str, nn.Module]) -> nn.Module:
    """A shallow copy of `module` (sharing its parameters, buffers and other children) with `children` swapped in."""
    twin = copy.copy(module)
    twin._modules = {**module._modules, **children}
    return twin


def stand_in_layers(
    layers: Sequence[nn.Module], *, group: bool, attention: str | None, linear_kernel: bool = False
) -> tuple[nn.Module, ...]:
    """Stand-ins for `layers`: projection groups as one GEMV each (`group`; the weights must have
    been grouped by `pack_weights`), attention run by HF's `attention` implementation (None: the
    model's), the attention and MLP modules' linear layers through `skinny_linear`
    (`linear_kernel`). A layer with nothing to swap is returned as is."""
    outputs = _Outputs()
    stand_ins = []
    for layer in layers:
        children: dict[str, dict[str, nn.Module]] = {}
        for parent_name, names, linears in projection_groups(layer) if group else ():
            if not stored_together(linears):  # packing stopped short of this group: it runs as it is
                continue
            swap: dict[str, nn.Module] = {names[0]: GroupedProjection(linears, outputs, linear_kernel)}
            for i, (name, linear) in enumerate(zip(names[1:], linears[1:]), 1):
                swap[name] = GroupMember(linear, i, i == len(names) - 1, outputs)
            children[parent_name] = swap
        for parent_name in ("self_attn", "mlp") if linear_kernel else ():
            parent = getattr(layer, parent_name, None)
            grouped = children.get(parent_name, {})
            rest = () if parent is None else parent.named_children()
            own = {name: SkinnyLinear(child) for name, child in rest if name not in grouped and serves(child)}
            if own:
                children[parent_name] = {**grouped, **own}
        swapped = {name: _with_children(getattr(layer, name), swap) for name, swap in children.items()}
        attn = swapped.get("self_attn", layer.self_attn)
        if attention is not None and getattr(attn.config, "_attn_implementation", None) != attention:
            attn = swapped["self_attn"] = _with_children(attn, {})
            attn.config = copy.copy(attn.config)
            attn.config._attn_implementation = attention
        stand_ins.append(_with_children(layer, swapped) if swapped else layer)
    return tuple(stand_ins)
