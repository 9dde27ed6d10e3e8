"""Attention over the fixed-capacity cache that reads only the slots a query sees.

A captured step attends over the whole cache capacity (its shapes are fixed when it is captured),
and SDPA's kernels for one query read all of it with one block of threads per head: on an H100 a
Llama-2-7B layer's one-token attention took 14.5 us at context 512 in a 1280-slot cache, ~0.47 ms
of a 5.6 ms step for 3% of its bytes. `decode_attention` is a custom op
(`skipspec::decode_attention`) whose CUDA implementation is a split-KV kernel of our own
(`decode_kernels`, Triton) that skips every block of slots the additive mask hides, and whose CPU
implementation is the plain formula (so the wiring is tested without a GPU). Being an opaque op,
it keeps the context length out of the compiled sublayers too: they see the same shapes at every
length and never recompile. It serves one-token steps and, a tile of queries per program, the few
queries of a tree or a scoring forward.

It reaches the model through transformers' `AttentionInterface`: `register()` adds
`decode_attention_forward` under `IMPLEMENTATION`, and the runtime's stand-in layers select it
through a copy of the model config (`runtime.layers.stand_in_layers`), so the model itself keeps
its own attention. It takes the runtime's additive `(1, 1, Q, capacity)` mask, in which the
runtime has already put causality, the tree and sliding windows.
"""

from __future__ import annotations

import math

import torch

IMPLEMENTATION = "skipspec_decode"


@torch.library.custom_op("skipspec::decode_attention", mutates_args=())
def decode_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float
) -> torch.Tensor:
    """softmax(softcap(q k^T * scale) + mask) v for Q query tokens.

    query: `(1, Hq, Q, D)`; key, value: `(1, Hkv, S, D)`, Hq a multiple of Hkv (grouped heads share
    a key/value head); mask: `(Q, S)` additive, 0 where visible and the dtype's lowest value where
    hidden (every query sees at least one slot); softcap: Gemma 2's logit soft-capping
    `c * tanh(x / c)`, 0 for none. Returns `(1, Hq, Q, D)`, contiguous, in the query's dtype.
    """
    if query.is_cuda:
        from .decode_kernels import decode  # Triton is imported only where it can run

        return decode(query, key, value, mask, scale, softcap)
    return reference_attention(query, key, value, mask, scale, softcap)


@decode_attention.register_fake
def _(query, key, value, mask, scale, softcap):
    return query.new_empty(query.shape)


def reference_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, scale: float, softcap: float
) -> torch.Tensor:
    """`decode_attention` as the plain formula, in float32 (its CPU implementation and the GPU tests' reference)."""
    group = query.shape[1] // key.shape[1]
    k = key.float().repeat_interleave(group, dim=1)
    v = value.float().repeat_interleave(group, dim=1)
    scores = (query.float() @ k.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores + mask.float()
    return (scores.softmax(dim=-1) @ v).to(query.dtype).contiguous()


def decode_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The `AttentionInterface` function: `(1, heads, Q, dim)` query in, `(1, Q, heads, dim)` out.

    The `sliding_window` keyword is not needed: the runtime's mask already hides what a window does.
    """
    if query.shape[0] != 1:
        raise ValueError(f"{IMPLEMENTATION} serves one sequence, got a query of {tuple(query.shape)}")
    if attention_mask is None or attention_mask.dtype == torch.bool or attention_mask.shape[-1] != key.shape[2]:
        raise ValueError(f"{IMPLEMENTATION} takes the runtime's additive mask over the whole cache")
    if dropout:
        raise ValueError(f"{IMPLEMENTATION} runs inference only (attention dropout {dropout})")
    if kwargs.get("s_aux") is not None:
        raise ValueError(f"{IMPLEMENTATION} has no attention sinks")
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    mask = attention_mask.reshape(query.shape[2], key.shape[2])
    out = torch.ops.skipspec.decode_attention(query, key, value, mask, float(scale), float(softcap or 0.0))
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make the decode attention known to transformers (idempotent); returns the name that selects it."""
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, decode_attention_forward)
    return IMPLEMENTATION
