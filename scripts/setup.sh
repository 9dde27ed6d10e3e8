#!/usr/bin/env bash
# Create .venv (if missing) and install skipspec with its test/bench/search/server extras (and
# Triton, whose CPU interpreter runs the decode kernel's test).
# PyTorch first, pinned: on these machines `torch==2.13.0` is a CPU build from local disk, while an
# unpinned torch would pull a multi-GB CUDA build. On a GPU machine install your own torch first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
python -m pip install -q -e ".[dev,kernel-tests]" 2>&1 | grep -v "is ignored" || true
python -c "import skipspec, torch, transformers; print('skipspec', skipspec.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
