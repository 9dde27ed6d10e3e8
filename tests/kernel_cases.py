"""skipspec's decode kernel against the attention formula: the cases, shared by the GPU test and a
CPU run under Triton's interpreter.

`python tests/kernel_cases.py` with `TRITON_INTERPRET=1` runs the kernel's own code on CPU tensors
(float32 and float16: the interpreter cannot multiply bf16 matrices), on smaller caches;
tests/test_decode_kernel.py runs it so, in a subprocess (the variable is read when Triton's
kernels are defined).
"""

from __future__ import annotations

import random

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
            options = rng.choice([{}, {"max_splits": 3}, {"max_splits": 1}])  # run-time values: no recompiles
            got = decode(q, k, v, mask, dim**-0.5, softcap, **options).float()
            want = reference_attention(q, k, v, mask, dim**-0.5, softcap).float()
            where = f"{q_heads}/{kv_heads}x{dim}, {queries} queries, {slots} slots, context {start}..{end}"
            assert (got - want).abs().max().item() < tol, f"{dtype} {where}, softcap {softcap}, {options}"
            checked += 1
    return checked


if __name__ == "__main__":
    small = [(h, kv, d, min(slots, 256)) for h, kv, d, slots in SHAPES]
    for dtype in (torch.float32, torch.float16):
        print(dtype, check_decode_kernel(dtype, "cpu", shapes=small), "cases equal the formula")
