"""Triton kernel behind `skipspec.runtime.skinny_linear` (CUDA only; imported on first use).

`y = x @ w.T (+ bias)` for a few rows of `x`: a decode step's matrix-vector products (one row) and
a small tree's (up to `MAX_ROWS`). Every program owns a block of output features and the whole
reduction over the inputs, so each weight element is read once, by one program, with no second
pass to combine partial sums (the result does not depend on scheduling: the same inputs give the
same bits). Enough programs to fill the GPU come from narrow output blocks instead of a split of
the reduction. One row runs as elementwise products summed once at the end; several rows as
`tl.dot` over a tile padded to 16 (the tensor cores' smallest), in float32 with exact products.
(Launching it as a programmatic dependent of the kernel before it, PDL, measured slower in a step.)
The weight may be stored either way round (its strides reach the kernel, and Triton specialises a
stride of 1 into vector loads along that dimension), but `choose` leaves column-major weights to
cuBLAS, which streams them faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .skinny_linear import MAX_ROWS

# Shared memory left to what Triton keeps there besides a pipeline's tiles (layout conversions).
_SHARED_MARGIN = 16 * 1024
# Both sides of a matrix from which several rows run the kernel (see `choose`).
_TILED_FROM = 4096


@dataclass(frozen=True)
class LinearConfig:
    """One launch's tile sizes: output features and inputs per program step, rows per program."""

    block_n: int
    block_k: int
    block_m: int = 1
    warps: int = 4
    stages: int = 2


@triton.jit
def _linear_kernel(
    X, W, Bias, Y, M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    n_ok = rn < N
    m_ok = rm < M
    w_ptr = W + rn[:, None] * stride_wn + rk[None, :] * stride_wk
    x_ptr = X + rm[:, None] * stride_xm + rk[None, :] * stride_xk
    # The weight streams through once: `evict_first` keeps it from evicting x, which every program reads.
    if DOT:
        # Several rows: Triton's software pipeline (`num_stages`) keeps the tiles of the next steps in flight.
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = rk < K - k0
            if EVEN_N and EVEN_K:
                w = tl.load(w_ptr, eviction_policy="evict_first")
            else:
                w = tl.load(w_ptr, mask=n_ok[:, None] & k_ok[None, :], other=0.0, eviction_policy="evict_first")
            x = tl.load(x_ptr, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            if IEEE:
                acc += tl.dot(x, tl.trans(w), input_precision="ieee")
            else:
                acc += tl.dot(x, tl.trans(w))
            w_ptr += BLOCK_K * stride_wk
            x_ptr += BLOCK_K * stride_xk
        out = acc
    else:
        # One row: elementwise products, summed once at the end. The next step's weight tile is
        # loaded before this step's products (that pipeline does not cover a loop without a dot):
        # measured on an H200, 5-10% faster.
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        if EVEN_N and EVEN_K:
            w = tl.load(w_ptr, eviction_policy="evict_first")
        else:
            w = tl.load(w_ptr, mask=n_ok[:, None] & (rk < K)[None, :], other=0.0, eviction_policy="evict_first")
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_ptr, mask=m_ok[:, None] & (rk < K - k0)[None, :], other=0.0)
            w_ptr += BLOCK_K * stride_wk
            x_ptr += BLOCK_K * stride_xk
            k_next = (rk < K - k0 - BLOCK_K)[None, :]
            w_next = tl.load(w_ptr, mask=n_ok[:, None] & k_next, other=0.0, eviction_policy="evict_first")
            acc += w.to(tl.float32) * x.to(tl.float32)  # x is one row: (1, BLOCK_K) broadcasts
            w = w_next
        out = tl.sum(acc, axis=1)[None, :]
    if HAS_BIAS:
        out += tl.load(Bias + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_ptr = Y + rm[:, None] * stride_ym + rn[None, :] * stride_yn
    tl.store(y_ptr, out.to(Y.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def choose(rows: int, out_features: int, in_features: int, column_major: bool) -> LinearConfig | None:
    """The tile sizes for a `(rows, in) x (out, in)^T` product; None where cuBLAS is the faster.

    Tuned on an H200 with a Llama-2-7B layer's shapes (`scripts/gpu_gemv_probe.py`). One row: on
    outputs up to 8192 wide, blocks of 8 features (512 programs for 4096: several resident per SM)
    by 512 inputs a step, 1024 on a long reduction (the down projection); wider outputs, blocks of
    32 by 256. Several rows: one tile of 16 rows, so the weight is still read once, 64 features by
    256 inputs a step five steps deep on the narrow outputs, by 128 on the wide ones; only on
    matrices at least 4096 by 4096, where it was measured faster: on smaller models' (SmolLM2,
    Qwen2.5-0.5B/1.5B, Gemma-3-270M shapes) those tiles leave most SMs idle and a 16-node verify
    ran 3-10% slower than on cuBLAS, while one row ran faster at every size. A column-major
    weight (the packed layout for cuBLAS, `runtime.weights`) is streamed faster by cuBLAS.
    """
    if column_major or rows > MAX_ROWS:
        return None
    if rows == 1:
        if out_features <= 8192:
            return LinearConfig(block_n=8, block_k=1024 if in_features >= 8192 else 512)
        return LinearConfig(block_n=32, block_k=256)
    if min(out_features, in_features) < _TILED_FROM:
        return None
    if out_features <= 8192:
        return LinearConfig(block_n=64, block_k=256, block_m=16, stages=5)
    if out_features <= 16384:
        return LinearConfig(block_n=32, block_k=128, block_m=16, stages=4)
    return LinearConfig(block_n=64, block_k=128, block_m=16, stages=3)


def stages_that_fit(stages: int, stage_bytes: int, shared_bytes: int) -> int:
    """The deepest pipeline up to `stages` whose tiles fit in `shared_bytes` of shared memory, less
    a margin for what else Triton keeps there (at least one stage: Triton says if even that fails)."""
    while stages > 1 and stages * stage_bytes > shared_bytes - _SHARED_MARGIN:
        stages -= 1
    return stages


def _shared_memory(device: torch.device) -> int:
    """Shared memory one program may use on `device` (227 KiB on an H100/H200, 99 KiB on an RTX 4090)."""
    return triton.runtime.driver.active.utils.get_device_properties(device.index)["max_shared_mem"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: LinearConfig) -> torch.Tensor:
    """`x @ weight.T + bias` for `x` of `(M, K)`, `(M, N)` in x's dtype, with `cfg`'s tiles (`choose`'s, say)."""
    rows, in_features = x.shape
    out_features = weight.shape[0]
    dot = cfg.block_m > 1
    # The tiles were tuned for 2-byte weights: a float32 step covers as many bytes with half the inputs.
    block_k = min(cfg.block_k * 2 // weight.element_size(), triton.next_power_of_2(in_features))
    block_k = max(block_k, 16 if dot else 1)  # 16: tl.dot's smallest
    stages = cfg.stages
    if dot and x.is_cuda:  # each pipeline stage holds a weight tile and an x tile in shared memory
        stage_bytes = (cfg.block_n + cfg.block_m) * block_k * weight.element_size()
        stages = stages_that_fit(stages, stage_bytes, _shared_memory(x.device))
    y = torch.empty(rows, out_features, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(out_features, cfg.block_n), triton.cdiv(rows, cfg.block_m))
    _linear_kernel[grid](
        x, weight, bias if bias is not None else weight, y, rows, out_features, in_features,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=block_k,
        EVEN_K=in_features % block_k == 0, EVEN_N=out_features % cfg.block_n == 0, HAS_BIAS=bias is not None,
        DOT=dot, IEEE=x.dtype == torch.float32, num_warps=cfg.warps, num_stages=stages,
    )  # fmt: skip
    return y
