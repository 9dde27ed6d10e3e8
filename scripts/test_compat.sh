#!/usr/bin/env bash
# The equivalence tests again on the oldest transformers skipspec supports (5.17, what the GPU
# image ships), in a separate venv: the adapter calls transformers' submodules directly, so a
# change of their signatures between versions must show up here.
set -euo pipefail
cd "$(dirname "$0")/.."
TF_VERSION="${TF_VERSION:-5.17.0}"
VENV=".venv-tf${TF_VERSION//./}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
python -m pip install -q "transformers==${TF_VERSION}" -e ".[dev]" 2>&1 | grep -v "is ignored" || true
python -c "import transformers; assert transformers.__version__ == '${TF_VERSION}', transformers.__version__"
python -m pytest -q tests/test_greedy_lossless.py tests/test_kv_cache.py tests/test_api.py tests/test_runtime_weights.py
