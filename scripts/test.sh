#!/usr/bin/env bash
# The default test suite, then the linters: bash scripts/test.sh [pytest args...]
# Both always run; the exit code is pytest's if it failed, else the linters'.
# stress/ is not part of this run: bash scripts/stress.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh

tests=0
.venv/bin/python -m pytest "$@" || tests=$?
lint=0
bash scripts/lint.sh || lint=$?

if [[ "$tests" -ne 0 ]]; then
    echo "test: pytest failed (exit code $tests)" >&2
    exit "$tests"
fi
if [[ "$lint" -ne 0 ]]; then
    echo "test: lint failed" >&2
    exit "$lint"
fi
echo "test: all passed"
