"""Linear layers of steps with a few rows, through skipspec's own matrix-vector kernel.

A decode step multiplies one row (a verify step a few) by every weight matrix, so its time is how
fast those products stream the weights. cuBLAS picks its kernels for general shapes: on an H200 it
reads a Llama-2-7B 4096 x 4096 projection at 64% of the copy bandwidth and the 4096 x 11008 down
projection at 79% (`scripts/gpu_floor_probe.py`). `skinny_linear` is a custom op
(`skipspec::skinny_linear`) whose CUDA implementation runs `linear_kernels` (Triton) for up to
`MAX_ROWS` rows and cuBLAS beyond; elsewhere it is `F.linear`, so the wiring is tested without a
GPU. An opaque op to TorchInductor, it is called from the compiled sublayers as it is.

It reaches the model through the fast path's stand-in layers (`runtime.layers`): `SkinnyLinear`
stands in for a layer's `nn.Linear`s and the output head, sharing their parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .weights import is_transposed

#: Rows (tokens of a step) the kernel serves: plain and draft steps, small trees; larger steps run cuBLAS.
MAX_ROWS = 16


@torch.library.custom_op("skipspec::skinny_linear", mutates_args=())
def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`; on CUDA, steps of at most `MAX_ROWS` rows run skipspec's kernel
    where its tiles for the shape beat cuBLAS (`linear_kernels.choose`)."""
    rows = x.numel() // x.shape[-1]
    if not x.is_cuda or rows > MAX_ROWS or rows == 0 or weight.dim() != 2:
        return F.linear(x, weight, bias)
    from .linear_kernels import choose, linear  # Triton is imported only where it can run

    config = choose(rows, weight.shape[0], weight.shape[1], is_transposed(weight))
    if config is None:
        return F.linear(x, weight, bias)
    return linear(x.reshape(rows, x.shape[-1]), weight, bias, config).reshape(*x.shape[:-1], weight.shape[0])


@skinny_linear.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class SkinnyLinear(nn.Module):
    """Stands in for an `nn.Linear` (its parameters shared): the same product through `skinny_linear`."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        # Parameters, as in `GroupedProjection`: a compiled region takes them as inputs.
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.skipspec.skinny_linear(x, self.weight, self.bias)


def serves(module: nn.Module) -> bool:
    """Whether `module` is a plain floating-point `nn.Linear` on a real device: not a quantized
    subclass, nor one whose forward was replaced or hooked (a tensor-parallel plan's), whose weight
    is a plain tensor (not a DTensor)."""
    if type(module) is not nn.Linear or "forward" in vars(module):
        return False
    if module._forward_hooks or module._forward_pre_hooks:
        return False
    w = module.weight
    plain = type(w.data) is torch.Tensor
    return plain and w.device.type != "meta" and w.dtype in (torch.float32, torch.float16, torch.bfloat16)
