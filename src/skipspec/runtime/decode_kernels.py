"""Triton kernels behind `skipspec.runtime.decode_attention` (CUDA only; imported on first use).

Split-KV decoding for a few query tokens: the cache's slots are cut into chunks, one program per
(key/value head, tile of queries, chunk) computes the chunk's softmax numerator and statistics for
its rows, every (query head sharing that key/value head, query token) pair of the tile, so grouped
heads and a tree's tokens read each key once; a second kernel combines the chunks per row. A block
of slots the additive mask hides from every row is skipped before its keys are read: the mask is
the only thing that says which slots a query sees, so a step reads the context it has, not the
capacity it was captured with, and nothing about the context length reaches the host or the
graph's shapes.

Two ways to skip. One-token steps run chunks of one block, and a branch on the block's mask costs
nothing there. A tree's chunks hold several blocks, and loads behind a branch are not pipelined:
a first pass over the chunk's masks finds its first and last visible blocks, and the loop between
them has no branch (a hidden block inside it is computed with weights the mask zeroes).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Rows of one program's tile (query heads of a group x query tokens): at most 64, fewer for wide
# rows, so the tile's operands (query rows, a block of keys and of values) stay well inside an
# SM's shared memory (an H100 has 227 KiB) in float32 and for head dims up to 256.
_ROW_BYTES = 16 * 1024


@triton.jit
def _mask_block(Mask, t, n, b_ok, stride_mt):
    """The additive mask of a block's rows (query tokens `t`) and slots `n`, in float32.

    Padding rows and slots past the chunk get a large finite negative, not -inf (a row whose
    entries were all -inf would compute -inf - -inf = NaN), set in float32 (float16 has no -1e30).
    """
    bias = tl.load(Mask + t[:, None] * stride_mt + n[None, :], mask=b_ok, other=0.0).to(tl.float32)
    return tl.where(b_ok, bias, -1.0e30)


@triton.jit
def _any_visible(bias):
    # An additive mask hides a slot with its dtype's lowest value (-3.4e38 in bf16 and float32,
    # -6.6e4 in float16): a block whose largest entry is below -1e4 has no visible slot.
    return tl.max(tl.max(bias, axis=1), axis=0) > -1.0e4


@triton.jit
def _block(
    q, K, V, Mask, acc, m_i, l_i, start, hi, t, r_ok, d, d_ok, kv_head, scale, softcap,
    stride_kh, stride_kc, stride_kd, stride_vh, stride_vc, stride_vd, stride_mt,
    BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr, IEEE: tl.constexpr, BOUND: tl.constexpr,
):  # fmt: skip
    """One block of slots into a program's running softmax (acc, m_i, l_i). Outside a bounded
    loop, a block the mask hides from every row is left before its keys are read."""
    n = start + tl.arange(0, BLOCK_N)
    n_ok = n < hi
    bias = _mask_block(Mask, t, n, r_ok[:, None] & n_ok[None, :], stride_mt)
    if BOUND:
        acc, m_i, l_i = _attend(
            q, K, V, bias, acc, m_i, l_i, n, n_ok, d, d_ok, kv_head, scale, softcap,
            stride_kh, stride_kc, stride_kd, stride_vh, stride_vc, stride_vd, SOFTCAP, IEEE,
        )  # fmt: skip
    elif _any_visible(bias):
        acc, m_i, l_i = _attend(
            q, K, V, bias, acc, m_i, l_i, n, n_ok, d, d_ok, kv_head, scale, softcap,
            stride_kh, stride_kc, stride_kd, stride_vh, stride_vc, stride_vd, SOFTCAP, IEEE,
        )  # fmt: skip
    return acc, m_i, l_i


@triton.jit
def _attend(
    q, K, V, bias, acc, m_i, l_i, n, n_ok, d, d_ok, kv_head, scale, softcap,
    stride_kh, stride_kc, stride_kd, stride_vh, stride_vc, stride_vd, SOFTCAP: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
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
    s = s + bias
    # A row with nothing visible in this block gets weights here that the first visible slot
    # (alpha = 0) or, failing one in this chunk, the combine (weight 0) removes.
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(V + kv_head * stride_vh + n[:, None] * stride_vc + d[None, :] * stride_vd, mask=kv_ok, other=0.0)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _chunk_kernel(
    Q, K, V, Mask, Acc, Max, Sum,
    scale, softcap, queries, slots, chunk, splits,
    stride_qh, stride_qt, stride_qd, stride_kh, stride_kc, stride_kd, stride_vh, stride_vc, stride_vd, stride_mt,
    GROUP: tl.constexpr, TILE: tl.constexpr, ROWS: tl.constexpr, DIM: tl.constexpr, DIM_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr, IEEE: tl.constexpr, BOUND: tl.constexpr,
):  # fmt: skip
    kv_head = tl.program_id(0)
    token0 = tl.program_id(1) * TILE
    split = tl.program_id(2)
    r = tl.arange(0, ROWS)
    g = r // TILE  # the row's query head within the group
    t = token0 + r % TILE  # the row's query token
    d = tl.arange(0, DIM_PAD)
    r_ok = (g < GROUP) & (t < queries)
    d_ok = d < DIM
    head = kv_head * GROUP + g
    q_ptr = Q + head[:, None] * stride_qh + t[:, None] * stride_qt + d[None, :] * stride_qd
    q = tl.load(q_ptr, mask=r_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, DIM_PAD], tl.float32)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, slots)
    first = lo
    last = hi
    if BOUND:
        # First pass over the masks alone: the chunk's first and last blocks with a visible slot,
        # so the loop over the blocks between them has no branch and its loads are pipelined.
        first = hi
        last = lo
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            seen = _any_visible(_mask_block(Mask, t, n, r_ok[:, None] & (n < hi)[None, :], stride_mt))
            first = tl.minimum(first, tl.where(seen, start, hi))
            last = tl.maximum(last, tl.where(seen, start + BLOCK_N, lo))
    for start in range(first, last, BLOCK_N):
        acc, m_i, l_i = _block(
            q, K, V, Mask, acc, m_i, l_i, start, hi, t, r_ok, d, d_ok, kv_head, scale, softcap,
            stride_kh, stride_kc, stride_kd, stride_vh, stride_vc, stride_vd, stride_mt,
            BLOCK_N, SOFTCAP, IEEE, BOUND,
        )  # fmt: skip
    row = (head * queries + t) * splits + split
    tl.store(Acc + row[:, None] * DIM_PAD + d[None, :], acc, mask=r_ok[:, None])
    tl.store(Max + row, m_i, mask=r_ok)
    tl.store(Sum + row, l_i, mask=r_ok)


@triton.jit
def _combine_kernel(
    Acc, Max, Sum, Out, queries, splits, stride_oh, stride_ot,
    DIM: tl.constexpr, DIM_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)  # head * queries + token
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, DIM_PAD)
    s_ok = s < splits
    m = tl.load(Max + row * splits + s, mask=s_ok, other=float("-inf"))
    top = tl.max(m, axis=0)
    # A chunk this row saw nothing of carries a max far below the top: its weight is 0.
    w = tl.where(s_ok, tl.exp(m - top), 0.0)
    total = tl.sum(tl.load(Sum + row * splits + s, mask=s_ok, other=0.0) * w, axis=0)
    acc = tl.load(Acc + (row * splits + s)[:, None] * DIM_PAD + d[None, :], mask=s_ok[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / total
    head, token = row // queries, row % queries
    tl.store(Out + head * stride_oh + token * stride_ot + d, out.to(Out.dtype.element_ty), mask=d < DIM)


def chunk_blocks(blocks: int, rows: int, groups: int, max_splits: int, programs: int) -> int:
    """Blocks per chunk for a cache of `blocks` blocks, programs of `rows` query rows (head x
    token) and `groups` (key/value head x query tile) programs per chunk index: at most
    `max_splits` chunks; and with many rows, rows / 8 blocks (a block's keys and values are
    4 * block_n bytes per head dim in bf16, so its rows' float32 partials, written and read back,
    are a quarter of that), as long as at least `programs` programs remain."""
    long_chunk = min(triton.cdiv(rows, 8), triton.cdiv(blocks, triton.cdiv(programs, groups)))
    return max(triton.cdiv(blocks, max_splits), long_chunk, 1)


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
    programs: int | None = None,
    num_warps: int | None = None,
    num_stages: int = 2,
    bound: bool | None = None,
) -> torch.Tensor:
    """`(1, Hq, Q, D)` attention of Q query tokens; shapes as `decode_attention.decode_attention`.

    The slots are cut into chunks of whole `block_n` blocks, as many as `max_splits` allows: many
    small chunks spread even a short context over the SMs (the programs past the context only read
    their masks), and `max_splits` bounds what the combine kernel holds at once. A program's rows
    are the group's query heads times a tile of query tokens, at least 16 (the smallest matrix
    product) and at most 64, fewer for wide heads (`_ROW_BYTES`). Each chunk's partial result
    (float32, a row per query head and token) is written and read back by the combine: with many
    rows, chunks grow to several blocks, so that traffic stays a small share of the keys and values
    read, while at least `programs` programs remain (None: twice the device's SMs) to fill the GPU.
    `bound` picks the bounded loop over the branch per block (None: for more than one query token).
    """
    _, q_heads, queries, dim = query.shape
    _, kv_heads, slots, _ = key.shape
    group = q_heads // kv_heads
    group_pad = triton.next_power_of_2(group)
    dim_pad = max(16, triton.next_power_of_2(dim))
    max_rows = max(16, min(64, _ROW_BYTES // (dim_pad * query.element_size())))
    tile = max(1, min(triton.next_power_of_2(queries), max_rows // group_pad))
    rows = max(16, group_pad * tile)
    tile = rows // group_pad  # rows left over by the 16-row minimum go to more tokens, not to waste
    blocks = triton.cdiv(slots, block_n)
    tiles = triton.cdiv(queries, tile)
    if bound is None:
        bound = queries > 1
    if programs is None:
        programs = 2 * torch.cuda.get_device_properties(query.device).multi_processor_count if query.is_cuda else 1
    chunk = block_n * chunk_blocks(blocks, group * min(tile, queries), kv_heads * tiles, max_splits, programs)
    splits = triton.cdiv(slots, chunk)
    acc = torch.empty(q_heads * queries * splits, dim_pad, device=query.device, dtype=torch.float32)
    stats = torch.empty(2, q_heads * queries * splits, device=query.device, dtype=torch.float32)
    out = torch.empty(1, q_heads, queries, dim, device=query.device, dtype=query.dtype)
    q, k, v, m = query[0], key[0], value[0], mask.reshape(queries, slots)
    if m.stride(1) != 1:
        m = m.contiguous()
    # 4 warps for every tile: 8 ran the 64-row tiles of trees 1.2-1.6x slower on an H200.
    _chunk_kernel[(kv_heads, tiles, splits)](
        q, k, v, m, acc, stats[0], stats[1],
        scale, softcap, queries, slots, chunk, splits,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), m.stride(0),
        GROUP=group, TILE=tile, ROWS=rows, DIM=dim, DIM_PAD=dim_pad,
        BLOCK_N=block_n, SOFTCAP=softcap > 0, IEEE=query.dtype == torch.float32, BOUND=bound,
        num_warps=num_warps or 4, num_stages=num_stages,
    )  # fmt: skip
    _combine_kernel[(q_heads * queries,)](
        acc, stats[0], stats[1], out, queries, splits, out.stride(1), out.stride(2),
        DIM=dim, DIM_PAD=dim_pad, SPLITS_PAD=max(16, triton.next_power_of_2(splits)), num_warps=4,
    )  # fmt: skip
    return out
