"""Triton kernels behind `skipspec.runtime.decode_attention` (CUDA only; imported on first use).

Split-KV decoding for one query token: the cache's slots are cut into chunks, one program per
(key/value head, chunk) computes the chunk's softmax numerator and statistics for all the query
heads that share that key/value head, and a second kernel combines the chunks per query head.
A block of slots whose additive mask is all "minus infinity" is skipped before its keys are read:
the mask is the only thing that says which slots the query sees, so a step reads the context it
has, not the capacity it was captured with, and nothing about the context length reaches the host
or the graph's shapes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _chunk_kernel(
    Q, K, V, Mask, Acc, Max, Sum,
    scale, softcap, slots, chunk,
    stride_qh, stride_qd, stride_kh, stride_kc, stride_kd, stride_vh, stride_vc, stride_vd,
    splits,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    kv_head = tl.program_id(0)
    split = tl.program_id(1)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, DIM_PAD)
    g_ok = g < GROUP
    d_ok = d < DIM
    heads = kv_head * GROUP + g
    q = tl.load(Q + heads[:, None] * stride_qh + d[None, :] * stride_qd, mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, slots)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < hi
        bias = tl.load(Mask + n, mask=n_ok, other=float("-inf")).to(tl.float32)
        # An additive mask hides a slot with its dtype's lowest value (-3.4e38 in bf16 and float32,
        # -6.6e4 in float16): a block whose largest entry is below -1e4 has no visible slot.
        if tl.max(bias, axis=0) > -1.0e4:
            kv_ok = n_ok[:, None] & d_ok[None, :]
            k = tl.load(K + kv_head * stride_kh + n[:, None] * stride_kc + d[None, :] * stride_kd, mask=kv_ok, other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = s * scale
            if SOFTCAP:
                # tanh(x) = 1 - 2 / (exp(2x) + 1), exact at both ends in float32
                s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
            s = s + bias[None, :]
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(V + kv_head * stride_vh + n[:, None] * stride_vc + d[None, :] * stride_vd, mask=kv_ok, other=0.0)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
    row = heads * splits + split
    tl.store(Acc + row[:, None] * DIM_PAD + d[None, :], acc, mask=g_ok[:, None])
    tl.store(Max + row, m_i, mask=g_ok)
    tl.store(Sum + row, l_i, mask=g_ok)


@triton.jit
def _combine_kernel(
    Acc, Max, Sum, Out, splits, stride_oh, DIM: tl.constexpr, DIM_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr
):
    head = tl.program_id(0)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, DIM_PAD)
    s_ok = s < splits
    m = tl.load(Max + head * splits + s, mask=s_ok, other=float("-inf"))
    top = tl.max(m, axis=0)
    # A chunk with no visible slot has max -inf and sum 0: its weight is exp(-inf) = 0.
    w = tl.where(s_ok, tl.exp(m - top), 0.0)
    total = tl.sum(tl.load(Sum + head * splits + s, mask=s_ok, other=0.0) * w, axis=0)
    acc = tl.load(Acc + (head * splits + s)[:, None] * DIM_PAD + d[None, :], mask=s_ok[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / total
    tl.store(Out + head * stride_oh + d, out.to(Out.dtype.element_ty), mask=d < DIM)


def decode(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    softcap: float,
    *,
    block_n: int = 64,
    max_splits: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """`(1, Hq, 1, D)` attention of one query token; shapes as `decode_attention.decode_attention`.

    The slots are cut into chunks of whole `block_n` blocks, as many as `max_splits` allows: many
    small chunks spread even a short context over the SMs (the programs past the context only read
    their masks), and `max_splits` bounds what the combine kernel holds at once.
    """
    _, q_heads, _, dim = query.shape
    _, kv_heads, slots, _ = key.shape
    group = q_heads // kv_heads
    blocks = triton.cdiv(slots, block_n)
    chunk = block_n * triton.cdiv(blocks, max_splits)
    splits = triton.cdiv(slots, chunk)
    dim_pad = max(16, triton.next_power_of_2(dim))
    acc = torch.empty(q_heads * splits, dim_pad, device=query.device, dtype=torch.float32)
    stats = torch.empty(2, q_heads * splits, device=query.device, dtype=torch.float32)
    out = torch.empty(1, q_heads, 1, dim, device=query.device, dtype=query.dtype)
    q, k, v = query[0, :, 0], key[0], value[0]
    _chunk_kernel[(kv_heads, splits)](
        q, k, v, mask, acc, stats[0], stats[1],
        scale, softcap, slots, chunk,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        splits,
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), DIM=dim, DIM_PAD=dim_pad,
        BLOCK_N=block_n, SOFTCAP=softcap > 0, IEEE=query.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    _combine_kernel[(q_heads,)](
        acc, stats[0], stats[1], out, splits, out.stride(1),
        DIM=dim, DIM_PAD=dim_pad, SPLITS_PAD=max(16, triton.next_power_of_2(splits)), num_warps=4,
    )  # fmt: skip
    return out
