#!/usr/bin/env bash
# Creates .venv (if missing) with python3 >= 3.11 and installs the project with the extras asked for:
#   bash scripts/setup.sh            pip install -e ".[dev]"    (the tests, linters, stress checks)
#   bash scripts/setup.sh demo       pip install -e ".[demo]"   (only what examples/demo.py needs)
# Re-runs the install only when pyproject.toml changed since the last install of those extras. A current
# dev install covers the other extras (dev lists their packages), so the demo never installs again after it.
# PYTHON=... picks the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

extras="${1:-dev}"
if [[ ! "$extras" =~ ^[a-z][a-z0-9_-]*$ ]]; then
    echo "setup: usage: bash scripts/setup.sh [dev|demo|msgspec|appinfra|remote]" >&2
    exit 2
fi
# One stamp per extra: a copy of the pyproject.toml it was installed from. (The dev stamp keeps the name
# it had before setup.sh took an argument, so an existing .venv is not installed again.)
stamp_of() { if [[ "$1" == dev ]]; then echo .venv/.installed-pyproject.toml; else echo ".venv/.installed-$1-pyproject.toml"; fi; }
stamp="$(stamp_of "$extras")"
dev_stamp="$(stamp_of dev)"
covered_by_dev=" dev demo msgspec appinfra remote "

# A .venv whose python does not run (moved, or its interpreter removed) is made again.
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    python="${PYTHON:-}"
    if [[ -z "$python" ]]; then
        for candidate in python3 python3.13 python3.12 python3.11; do
            if command -v "$candidate" >/dev/null 2>&1 \
                && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
                python="$candidate"
                break
            fi
        done
    fi
    if [[ -z "$python" ]]; then
        echo "setup: needs Python >= 3.11 (python3 on PATH, or PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    echo "setup: creating .venv with $("$python" --version 2>&1)"
    rm -rf .venv
    if ! "$python" -m venv .venv; then
        rm -rf .venv
        echo "setup: '$python -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
fi

if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    # Created without pip (uv, --without-pip, an interrupted creation).
    .venv/bin/python -m ensurepip --upgrade >/dev/null
    rm -f .venv/.installed-*pyproject.toml
fi

current() { [[ -f "$1" ]] && cmp -s pyproject.toml "$1"; }
if current "$stamp" || { [[ "$covered_by_dev" == *" $extras "* ]] && current "$dev_stamp"; }; then
    exit 0
fi
echo "setup: installing isolated_api[$extras] into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
cp pyproject.toml "$stamp"
