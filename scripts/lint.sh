#!/usr/bin/env bash
# ruff, mypy (strict) and the architecture contracts (import-linter, in pyproject.toml) over the code,
# the tests and the examples. All run; fails if any does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh

status=0
echo "lint: ruff check ."
.venv/bin/ruff check . || status=1
echo "lint: mypy isolated_api features tests examples stress"
.venv/bin/mypy isolated_api features tests examples stress || status=1
echo "lint: lint-imports (architecture contracts in pyproject.toml)"
.venv/bin/lint-imports --no-cache || status=1
exit "$status"
