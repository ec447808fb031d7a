#!/usr/bin/env bash
# Capacity checks (not in the default run): bash scripts/stress.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest stress/ -s "$@"
