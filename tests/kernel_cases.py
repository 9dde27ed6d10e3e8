"""skipspec's Triton kernels against their formulas (the decode attention; the skinny linear): the
cases, shared by the GPU tests and a CPU run under Triton's interpreter.

`python tests/kernel_cases.py` with `TRITON_INTERPRET=1` runs the kernel's own code on CPU tensors
(float32 and float16: the interpreter cannot multiply bf16 matrices), on smaller caches;
tests/test_decode_kernel.py runs it so, in a subprocess (the variable is read when Triton's
kernels are defined).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import torch

from skipspec.runtime.decode_attention import reference_attention

# (query heads, key/value heads, head dim, cache slots): Llama-2-7B, Qwen2.5-1.5B, SmolLM2,
# Gemma-3-270M (head dim 256), Phi-3-like (head dim 96, a slot count off the block size)
SHAPES = [(32, 32, 128, 1280), (12, 2, 128, 700), (9, 3, 64, 300), (4, 1, 256, 1280), (8, 8, 96, 130)]


def check_decode_kernel(dtype: torch.dtype, device: str, *, shapes=SHAPES, trials: int = 4) -> int:
    """Assert the kernel equals the float32 formula on one query and on trees of 3-40: grouped and
    ungrouped heads, head dims 64-256, soft-capping, contexts inside one block and across many, a
    hidden prefix (a sliding window) and hidden holes, several split sizes (chunks wholly hidden
    too). Returns the number of cases checked."""
    from skipspec.runtime.decode_kernels import decode

    gen = torch.Generator(device=device).manual_seed(0)
    rng = random.Random(f"decode-{dtype}")
    hidden = torch.finfo(dtype).min
    # float32 runs exact (IEEE) products; half types round the output and the probabilities.
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    cases = [(shape, queries) for shape in shapes for queries in (1, 16)] + [(shapes[-1], 40), (shapes[1], 3)]
    checked = 0
    for (q_heads, kv_heads, dim, slots), queries in cases:
        q = torch.randn(1, q_heads, queries, dim, device=device, dtype=dtype, generator=gen)
        k, v = (torch.randn(1, kv_heads, slots, dim, device=device, dtype=dtype, generator=gen) for _ in "kv")
        for trial in range(trials):
            end = rng.choice([1, 5, 64, 65, rng.randint(1, slots - queries), slots - queries])
            start = rng.randint(0, end - 1) if trial % 2 else 0
            # The context [start, end) for every query, then a tree: query i sees its own slot and
            # a random set of the earlier tree slots (its ancestors).
            visible = torch.zeros(queries, slots, dtype=torch.bool)
            visible[:, start:end] = True
            for i in range(queries):
                visible[i, end + i] = True
                visible[i, end : end + i] |= torch.tensor([rng.random() < 0.4 for _ in range(i)], dtype=torch.bool)
            if trial == 3 and end - start > 2:
                visible[:, rng.randint(start, end - 2)] = False  # a hole
            mask = torch.zeros(queries, slots, dtype=dtype).masked_fill_(~visible, hidden).to(device)
            softcap = 30.0 if trial == 2 else 0.0
            # Few splits, one, and chunks of one block for many programs (run-time values, no
            # recompiles); the loop the other query counts take (a branch per block or bounded).
            options = rng.choice([{}, {"max_splits": 3}, {"max_splits": 1}, {"programs": 1000}])
            options |= rng.choice([{}, {"bound": queries == 1}])
            got = decode(q, k, v, mask, dim**-0.5, softcap, **options).float()
            want = reference_attention(q, k, v, mask, dim**-0.5, softcap).float()
            where = f"{q_heads}/{kv_heads}x{dim}, {queries} queries, {slots} slots, context {start}..{end}"
            assert (got - want).abs().max().item() < tol, f"{dtype} {where}, softcap {softcap}, {options}"
            checked += 1
    return checked


def run_in_interpreter(which: str) -> str:
    """Run this file's `which` cases ("decode" or "linear") in a subprocess under Triton's CPU
    interpreter (the variable is read when Triton's kernels are defined); returns its stdout."""
    here = Path(__file__).resolve().parent
    path = os.pathsep.join([str(here.parent / "src"), str(here), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    run = subprocess.run([sys.executable, __file__, which], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    return run.stdout


# (out, in): SmolLM2's q/k/v and o, a width off every block (Phi-3-like), a short reduction, a long
# one off the 1024-input step (Llama-2-7B's down projection has 11008 inputs), a grouped q/k/v.
LINEAR_SHAPES = [(576, 576), (200, 72), (96, 40), (64, 2100), (1152, 576)]


def check_linear_kernel(dtype: torch.dtype, device: str, *, shapes=LINEAR_SHAPES) -> int:
    """Assert the skinny-linear kernel equals the float64 product: one row and trees of 2-16 (tiles
    of 16 rows, some of them padding), with and without a bias, with the tiles `choose` picks for
    each shape and row count and with tiles whose blocks do not divide the shape; the rows of x
    strided as a view gives them. Returns the number of cases checked."""
    from skipspec.runtime.linear_kernels import LinearConfig, choose, linear

    gen = torch.Generator(device=device).manual_seed(1)
    # float32 runs exact (IEEE) products; half types round the output (a relative 2^-11 in float16,
    # 2^-8 in bfloat16) and accumulate in float32.
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 1.6e-2}[dtype]
    odd = [LinearConfig(block_n=16, block_k=64), LinearConfig(block_n=32, block_k=32, block_m=16, stages=3)]
    checked = 0
    for out_f, in_f in shapes:
        weight = torch.randn(out_f, in_f, device=device, dtype=dtype, generator=gen) / in_f**0.5
        bias = torch.randn(out_f, device=device, dtype=dtype, generator=gen)
        for rows in (1, 2, 5, 16):
            wide = torch.randn(rows, 2 * in_f, device=device, dtype=dtype, generator=gen)
            x = wide[:, ::2] if rows == 5 else wide[:, :in_f]  # a strided and a row-strided view
            chosen = choose(rows, out_f, in_f, column_major=False)
            for cfg in [c for c in (chosen, *odd) if c is not None and (rows > 1 or c.block_m == 1)]:
                for b in (None, bias):
                    got = linear(x, weight, b, cfg).double()
                    want = x.double() @ weight.double().T + (0 if b is None else b.double())
                    err = ((got - want).abs().max() / want.abs().max()).item()
                    assert err < tol, f"{dtype} {rows} x ({out_f}, {in_f}), bias {b is not None}, {cfg}: {err:.2e}"
                    checked += 1
    return checked


if __name__ == "__main__":
    which = sys.argv[1:] or ["decode", "linear"]
    if "decode" in which:
        small = [(h, kv, d, min(slots, 256)) for h, kv, d, slots in SHAPES]
        for dtype in (torch.float32, torch.float16):
            print(dtype, check_decode_kernel(dtype, "cpu", shapes=small), "cases equal the formula")
    if "linear" in which:  # the interpreter runs each program in turn: the narrower shapes
        for dtype in (torch.float32, torch.float16):
            print(dtype, check_linear_kernel(dtype, "cpu", shapes=LINEAR_SHAPES[1:4]), "cases equal the product")
