"""The decode kernel's own code (Triton) on the CPU, through Triton's interpreter.

The GPU test file runs the compiled kernel; here `TRITON_INTERPRET=1` runs the same kernel
functions with NumPy on CPU tensors, so its indexing, block skipping, tiling and split combine are
checked on every test run. Skipped where Triton is not installed (it is in the `dev` extra on
Linux x86-64).
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
        [sys.executable, str(HERE / "kernel_cases.py")], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    assert run.stdout.count("cases equal the formula") == 2, run.stdout
