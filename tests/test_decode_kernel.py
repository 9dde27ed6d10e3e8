"""The decode attention on the CPU: the kernel's own code through Triton's interpreter, and the
function transformers calls.

The GPU test file runs the compiled kernel; here `TRITON_INTERPRET=1` runs the same kernel
functions with NumPy on CPU tensors, so its indexing, block skipping, tiling and split combine are
checked on every test run (skipped where Triton is not installed; `scripts/setup.sh` installs it,
the `kernel-tests` extra, on Linux x86-64).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_decode_kernel_equals_the_attention_formula_in_tritons_interpreter():
    pytest.importorskip("triton")
    path = os.pathsep.join([str(HERE.parent / "src"), str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    run = subprocess.run(
        [sys.executable, str(HERE / "kernel_cases.py"), "decode"], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    assert run.stdout.count("cases equal the formula") == 2, run.stdout


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
