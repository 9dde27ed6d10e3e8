export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
timeout 560 python3 -m pytest -v -p no:cacheprovider -m gpu tests/test_gpu_runtime.py -W ignore::FutureWarning -k "decode_kernel_equals or drafting_steps_on or hybrid or after_warmup or after_a_sampling" 2>&1 | grep -E "PASS|FAIL|Error|passed|failed|error" | tail -30
