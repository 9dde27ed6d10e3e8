#!/usr/bin/env bash
# The GPU run in one go: environment, the GPU tests, then scripts/gpu_bench.py (SmolLM2 against
# transformers `generate`, random Llama-2 7B/13B cost model). Logs, results.json and results.md
# land in $OUT; the summary table is printed last.
#
#   OUT=bench-out/gpu scripts/gpu_bench.sh [gpu_bench.py arguments]
#
# Optional inputs, for a machine with no network (the device tool carries git-ignored folders):
#   .gpu/*/gguf-*.whl               the gguf wheel (transformers needs it to read GGUF files)
#   .gpu/*/smollm2.gguf.a?          SmolLM2's GGUF in parts (may arrive on separate calls; they
#                                    are kept in /root/models until the machine is given back)
#   .gpu/*/spec_bench_dev.jsonl     the Spec-Bench dev prompts
# SKIP_TESTS=1 skips the GPU tests.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-out/gpu}"
mkdir -p "$OUT" /root/models 2>/dev/null || mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
MODELS="${MODELS:-/root/models}"
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF="$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"

wheel=$(ls .gpu/*/gguf-*.whl .whl/gguf-*.whl 2>/dev/null | head -1)
if [ -n "$wheel" ] && ! python3 -c "import gguf" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$wheel" && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
for part in .gpu/*/smollm2.gguf.a?; do
  [ -f "$part" ] && cp "$part" "$MODELS/" && echo "kept $(basename "$part") in $MODELS"
done
if [ ! -f "$GGUF" ] && [ -f "$MODELS/smollm2.gguf.aa" ] && [ -f "$MODELS/smollm2.gguf.ab" ]; then
  cat "$MODELS/smollm2.gguf.aa" "$MODELS/smollm2.gguf.ab" > "$GGUF"
fi
MODEL_ARGS=()
if [ -f "$GGUF" ]; then
  if [ "$(sha256sum "$GGUF" | cut -d' ' -f1)" = "$SHA" ]; then
    MODEL_ARGS=(--model "$GGUF")
    echo "SmolLM2 GGUF ok (sha256 checked)"
  else
    echo "SmolLM2 GGUF has the wrong sha256: not used"
  fi
else
  echo "SmolLM2 GGUF not here: its section runs on random weights of its shape"
fi
prompts=$( (ls .gpu/*/prompts.jsonl; ls .gpu/*/spec_bench_dev.jsonl ../shared/data/spec_bench_dev.jsonl) 2>/dev/null | head -1)
PROMPT_ARGS=()
[ -n "$prompts" ] && PROMPT_ARGS=(--prompts "$prompts")

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv 2>/dev/null
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_runtime.py 2>&1 | tee "$OUT/gpu_tests.log"
fi
python3 scripts/gpu_bench.py --out "$OUT" "${MODEL_ARGS[@]}" "${PROMPT_ARGS[@]}" "$@" 2>&1 | tee "$OUT/bench.log"
