#!/usr/bin/env bash
# The README demo: bash scripts/demo.sh [--port 8000] [--smoke]. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
