#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, then the equivalence tests on the oldest
# supported transformers. Extra arguments go to the main pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q -ra "$@"
deactivate
bash scripts/test_compat.sh
