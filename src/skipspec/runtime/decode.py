"""Attention for one-token steps: FlexAttention's split-KV decoding kernel over the cache blocks a query sees.

A captured step attends over the whole cache capacity. For one query token, SDPA's kernels run one
block of threads per head over all of it (on an H100 a Llama-2-7B shape reads its 17 MB a layer at
about 1.3 TB/s, a third of the card's bandwidth, and reads the empty slots past the context too).
FlexAttention's decoding kernel splits the keys across the SMs and, given a block mask, skips the
blocks no query may see, so a step reads the context it has, not the capacity it might reach.

The block mask must change every step (the query moves) yet be one fixed object for the captured
graph and for the compiled sublayer that takes it. So `DecodeMask` owns persistent buffers (the
allowed slots, the number of visible blocks and their indices) and one `BlockMask` built over them
once; each step rewrites the buffers in place on the device (`DecodeMask.update`), no host sync.

The function is registered in transformers' `AttentionInterface` under `IMPLEMENTATION`; stand-in
layers (`runtime.layers.stand_in_layers`) select it through a copy of the model config, so the
model itself keeps its own attention.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

IMPLEMENTATION = "skipspec_flex_decode"
BLOCK = 128  # FlexAttention's default key block; a block is skipped when no slot in it is visible


def flex_decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: BlockMask,
    scaling: float | None = None,
    softcap: float | None = None,
    kernel_options: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The `AttentionInterface` function: `(batch, heads, q, dim)` inputs, `(batch, q, heads, dim)` output.

    Sliding windows arrive in the block mask (the runtime builds it from the layer type's mask),
    so the `sliding_window` keyword is not needed here.
    """
    if not isinstance(attention_mask, BlockMask):
        raise TypeError(f"{IMPLEMENTATION} takes a BlockMask from DecodeMask.update, got {type(attention_mask).__name__}")
    if kwargs.get("dropout", 0.0):
        raise ValueError(f"{IMPLEMENTATION} runs inference only (attention dropout {kwargs['dropout']})")
    score_mod = None
    if softcap:  # Gemma 2's logit soft-capping

        def score_mod(score, b, h, q, kv):
            return softcap * torch.tanh(score / softcap)

    out = flex_attention(
        query,
        key,
        value,
        score_mod=score_mod,
        block_mask=attention_mask,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
        kernel_options=kernel_options,
    )
    return out.transpose(1, 2).contiguous(), None


def register(kernel_options: tuple[tuple[str, int], ...] = ()) -> str:
    """Make the decode attention known to transformers (idempotent); returns the name to select it by.

    `kernel_options` (FlexAttention's: BLOCK_N, num_stages, num_warps, SPLIT_KV, ...) get a name of
    their own, so runtimes with different options can live in one process.
    """
    from transformers import AttentionInterface

    if not kernel_options:
        name, fn = IMPLEMENTATION, flex_decode_attention
    else:
        name = IMPLEMENTATION + "[" + ",".join(f"{k}={v}" for k, v in kernel_options) + "]"
        fn = functools.partial(flex_decode_attention, kernel_options=dict(kernel_options))
    AttentionInterface.register(name, fn)
    return name


class DecodeMask:
    """One layer type's block mask for one-token steps over a cache of `capacity` slots.

    `mask` is built once over persistent buffers; `update(allowed)` rewrites them for the step's
    query and returns it. The visible blocks come first in `indices`, in slot order, so the kernel
    reads exactly those; the slot mask inside them is read by the mask function.
    """

    def __init__(self, capacity: int, device: torch.device | str) -> None:
        self.capacity = capacity
        self.blocks = -(-capacity // BLOCK)
        # Padded to whole blocks, so a block's slots are one view; the padding is never visible.
        allowed = torch.zeros(self.blocks * BLOCK, dtype=torch.bool, device=device)
        self.allowed = allowed
        self.count = torch.zeros(1, 1, 1, dtype=torch.int32, device=device)
        self.indices = torch.zeros(1, 1, 1, self.blocks, dtype=torch.int32, device=device)

        def visible(b, h, q, kv):
            return allowed[kv]

        self.mask = BlockMask.from_kv_blocks(
            self.count,
            self.indices,
            BLOCK_SIZE=BLOCK,
            mask_mod=visible,
            seq_lengths=(1, capacity),
            compute_q_blocks=False,  # the backward pass's index; inference never reads it
        )

    def update(self, allowed: torch.Tensor) -> BlockMask:
        """Point the mask at `allowed`, `(capacity,)` or `(1, capacity)` bool (device ops only)."""
        self.allowed[: self.capacity].copy_(allowed.reshape(self.capacity))
        active = self.allowed.view(self.blocks, BLOCK).any(dim=-1)
        self.count.view(1).copy_(active.sum())
        # A stable sort of "not visible" lists the visible blocks first, in slot order.
        self.indices.view(-1).copy_(torch.argsort((~active).to(torch.int8), stable=True))
        return self.mask


class DecodeMasks:
    """The `Sublayers.masks` hook of one-token steps: one `DecodeMask` per layer type, over one cache."""

    def __init__(self, kinds: set[str] | frozenset[str], capacity: int, device: torch.device | str) -> None:
        self.by_kind = {kind: DecodeMask(capacity, device) for kind in sorted(kinds)}

    def __call__(self, masks: Mapping[str, torch.Tensor]) -> dict[str, BlockMask]:
        """Boolean masks `(1, 1, 1, capacity)` per layer type -> the block masks the layers take."""
        if any(m.shape[-2] != 1 for m in masks.values()):
            raise ValueError(f"{IMPLEMENTATION} serves one-token steps only")
        return {kind: self.by_kind[kind].update(m) for kind, m in masks.items()}
