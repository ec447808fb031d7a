#!/usr/bin/env bash
# The README demo: bash scripts/demo.sh [--port 8000] [--token-delay 0.08] [--smoke]. Open the URL it prints
# to watch tokens stream in; Ctrl-C stops it. Installs into .venv only what the demo needs (the "demo" extra).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh demo  # the runtime dependencies only; a dev install covers it
exec .venv/bin/python examples/demo.py "$@"
