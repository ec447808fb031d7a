#!/usr/bin/env bash
# ruff and mypy (strict) over the code, the tests and the examples. Both run; fails if either does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh

status=0
echo "lint: ruff check ."
.venv/bin/ruff check . || status=1
echo "lint: mypy isolated_api features tests examples stress"
.venv/bin/mypy isolated_api features tests examples stress || status=1
exit "$status"
