"""The decode attention on the CPU: the kernel's own code through Triton's interpreter, and the
function transformers calls.

The GPU test file runs the compiled kernel; here `TRITON_INTERPRET=1` runs the same kernel
functions with NumPy on CPU tensors, so its indexing, block skipping, tiling and split combine are
checked on every test run (skipped where Triton is not installed; `scripts/setup.sh` installs it,
the `kernel-tests` extra, on Linux x86-64).
"""

from __future__ import annotations

import pytest
from kernel_cases import run_in_interpreter


def test_decode_kernel_equals_the_attention_formula_in_tritons_interpreter():
    pytest.importorskip("triton")
    out = run_in_interpreter("decode")
    assert out.count("cases equal the formula") == 2, out


def test_chunks_grow_with_the_rows_a_program_writes_while_the_gpu_stays_filled():
    pytest.importorskip("triton")
    from skipspec.runtime.decode_kernels import chunk_blocks

    # A 7B one-token step (32 heads, 1 row each) in a 2816-slot cache: one 64-slot block a chunk,
    # 44 chunks; in a cache of 8192 blocks, no more than 64 chunks.
    assert chunk_blocks(44, 1, 32, 64, 264) == 1
    assert chunk_blocks(8192, 1, 32, 64, 264) == 128
    # A 16-node tree: 2 blocks a chunk (partials a quarter of the keys' and values' bytes).
    assert chunk_blocks(44, 16, 32, 64, 264) == 2
    # A 64-node tree: 8 blocks would leave 6 chunks x 32 heads, fewer than 264 programs: 5 blocks.
    assert chunk_blocks(44, 64, 32, 64, 264) == 5
    assert chunk_blocks(44, 64, 32, 64, 1) == 8  # no fill asked for: rows / 8
    assert chunk_blocks(1, 64, 32, 64, 264) == 1


@pytest.mark.parametrize("queries", [1, 5])
def test_the_attention_function_keeps_transformers_contract(queries):
    """`decode_attention_forward` (registered in transformers' AttentionInterface) returns what
    transformers' own SDPA function returns for the same additive mask: `(1, Q, heads, dim)`, grouped
    heads included; a boolean or missing mask is refused rather than misread."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from skipspec.runtime.decode_attention import decode_attention_forward

    gen = torch.Generator().manual_seed(queries)
    q = torch.randn(1, 6, queries, 16, generator=gen)
    k, v = (torch.randn(1, 2, 40, 16, generator=gen) for _ in "kv")
    visible = torch.rand(queries, 40, generator=gen) < 0.5
    visible[:, 0] = True
    mask = torch.zeros(1, 1, queries, 40).masked_fill_(~visible, torch.finfo(torch.float32).min)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = False, 3
    got, _ = decode_attention_forward(module, q, k, v, mask, scaling=0.3)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert got.shape == (1, queries, 6, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="additive mask"):
        decode_attention_forward(module, q, k, v, visible[None, None], scaling=0.3)
    with pytest.raises(ValueError, match="additive mask"):
        decode_attention_forward(module, q, k, v, None)
