#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, then the equivalence tests on the oldest
# supported transformers (scripts/test_compat.sh); ends with both runs' pytest summary lines.
# Extra arguments go to the main pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
status=0
(. .venv/bin/activate && python -m pytest -q -ra "$@") 2>&1 | tee "$logs/main" || status=$?
bash scripts/test_compat.sh 2>&1 | tee "$logs/compat" || status=$?
summary() { grep -E "[0-9]+ (passed|failed|errors?)|no tests ran" "$1" | tail -n 1 || echo "no pytest summary (see above)"; }
echo
printf '%-28s %s\n' "test suite:" "$(summary "$logs/main")" "on transformers ${TF_VERSION:-5.17.0}:" "$(summary "$logs/compat")"
exit "$status"
