"""Opt-in kernel fusion for the fast path: the sublayer functions compiled by TorchInductor.

A decode step of a small model is a thousand-odd tiny kernels (an RMSNorm alone is eight), and
inside a CUDA graph each still costs a couple of microseconds. Compiling the attention and MLP
sublayer functions fuses norms, rotary embedding, activations and residual adds. The functions
take the layer module as an argument and the cache as a per-layer `LayerKV`, so one compiled
copy serves every layer and every skip set; only new shapes (the query bucket, the capacity)
compile again. Compilation happens on first use, inside the warm-up run that precedes a graph
capture, never at import. Inductor's own CUDA graphs stay off: our runtime captures the whole step.
"""

from __future__ import annotations

import torch

from ..model.adapter import Sublayers, attention_sublayer, mlp_sublayer
from ..model.cache import KVCache, LayerKV


def compiled_sublayers(cache: KVCache, num_layers: int) -> Sublayers:
    """Compiled sublayer regions writing into `cache` (one `LayerKV` per layer)."""
    return Sublayers(
        attention=torch.compile(attention_sublayer, dynamic=None),
        mlp=torch.compile(mlp_sublayer, dynamic=None),
        caches=tuple(LayerKV(cache, i) for i in range(num_layers)),
    )
