#!/usr/bin/env bash
# The equivalence tests again on the oldest transformers skipspec supports (5.17, what the GPU image
# ships): the adapter calls transformers' submodules directly, so a change of their signatures
# between versions must show up here; so must one of the tensor-parallel entry point, which differs.
#
# No second virtualenv: pip's resolver, run against .venv, names the few packages that version
# needs in other versions than .venv has (transformers and huggingface_hub, about 60 MB); they are
# installed into a small folder (default .venv/overlays/transformers-<version>, or $TF_OVERLAY) put
# first on PYTHONPATH, and torch and everything else come from .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
TF_VERSION="${TF_VERSION:-5.17.0}"
OVERLAY="${TF_OVERLAY:-.venv/overlays/transformers-${TF_VERSION}}"
. .venv/bin/activate
if [ ! -f "$OVERLAY/.complete" ]; then
  rm -rf "$OVERLAY"
  mkdir -p "$OVERLAY"
  python -m pip install --dry-run --quiet --report "$OVERLAY/resolved.json" "transformers==${TF_VERSION}" \
    >"$OVERLAY/pip.log" 2>&1 || { cat "$OVERLAY/pip.log"; exit 1; }
  pins=$(python - "$OVERLAY/resolved.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print(" ".join(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in report["install"]))
PY
)
  echo "transformers ${TF_VERSION} on top of .venv: ${pins:-nothing to add}"
  if [ -n "$pins" ]; then
    # shellcheck disable=SC2086  # one word per pin
    python -m pip install --quiet --no-deps --no-compile --target "$OVERLAY" $pins \
      >"$OVERLAY/pip.log" 2>&1 || { cat "$OVERLAY/pip.log"; exit 1; }
  fi
  touch "$OVERLAY/.complete"
fi
if [ -d ".venv-tf${TF_VERSION//./}" ]; then
  echo "note: .venv-tf${TF_VERSION//./}, the full virtualenv earlier versions of this script made, is no longer used"
fi
export PYTHONPATH="$(realpath "$OVERLAY")${PYTHONPATH:+:$PYTHONPATH}"
python -c "import transformers; assert transformers.__version__ == '${TF_VERSION}', transformers.__version__"
python -m pytest -q tests/test_greedy_lossless.py tests/test_kv_cache.py tests/test_api.py tests/test_runtime_weights.py \
  tests/test_device_drafting.py tests/test_no_deprecations.py tests/test_gguf_cache.py tests/test_cli.py \
  tests/test_bad_input.py tests/test_tensor_parallel.py
