"""Device memory a request will need, checked before any work starts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SkipSpecError

# cuBLAS workspaces, the CUDA graph bookkeeping and allocator rounding, on top of the estimate.
_FIXED_OVERHEAD = 256 * 2**20
_SLACK = 1.25


class DeviceMemoryError(SkipSpecError, MemoryError):
    """The request's KV cache and step workspace do not fit in the device's free memory."""


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one request needs on the device besides the model's weights.

    cache: the KV cache at the rounded capacity.
    workspace: the largest step's temporaries, which live in the graphs' shared memory pool
    (logits of the widest step, masks, attention and MLP activations, the commit's slot copy),
    with slack for what the estimate does not see.
    """

    capacity: int
    cache: int
    workspace: int

    @property
    def total(self) -> int:
        return self.cache + self.workspace

    def describe(self) -> str:
        gib = 2**30
        return (
            f"KV cache of {self.capacity} slots {self.cache / gib:.2f} GiB + step workspace "
            f"{self.workspace / gib:.2f} GiB = {self.total / gib:.2f} GiB"
        )


def plan_memory(adapter, capacity: int, widest: int, sampling: bool) -> MemoryPlan:
    """Estimate for a cache of `capacity` slots whose widest step carries `widest` queries."""
    cfg = adapter.config
    size = torch.finfo(adapter.dtype).bits // 8
    layers, kv_heads, head_dim = adapter.num_layers, adapter.num_kv_heads, adapter.head_dim
    heads = cfg.num_attention_heads
    slot_bytes = layers * 2 * kv_heads * head_dim * size
    cache = capacity * slot_bytes
    hidden, inter = cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    vocab = adapter.vocab_size
    # float32 logits and their top-k; sampling: the scaled copy, the filters' sort (values, int64
    # order), probabilities and their running sum, then the draw's float64 running sum.
    logits = widest * vocab * 4 * (9 if sampling else 2)
    masks = widest * capacity * (size + 2) * 2  # bool and additive, per layer type
    attention = widest * heads * capacity * 4 + 2 * heads * capacity * head_dim * size  # math-kernel scores, repeated KV
    activations = widest * (4 * hidden + 3 * inter + 3 * heads * head_dim) * max(size, 4)
    commit = widest * slot_bytes
    workspace = int((logits + masks + attention + activations + commit) * _SLACK) + _FIXED_OVERHEAD
    return MemoryPlan(capacity, cache, workspace)


def available_bytes(device: torch.device) -> int:
    """Free device memory, counting blocks PyTorch's allocator holds but does not use."""
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def check_fits(plan: MemoryPlan, device: torch.device, margin: float, available: int | None = None) -> None:
    """Raise `DeviceMemoryError` unless `plan` fits in `margin` of the available memory (CUDA only)."""
    if device.type != "cuda":
        return
    if available is None:
        available = available_bytes(device)
    if plan.total > margin * available:
        raise DeviceMemoryError(
            f"this request needs {plan.describe()} on {device}, but only {available / 2**30:.2f} GiB "
            f"is free (using at most {margin:.0%} of it); ask for fewer new tokens, a shorter prompt, "
            "or a smaller max_draft_tokens / topk"
        )
