#!/usr/bin/env bash
# Creates .venv (if missing) with python3 >= 3.11 and installs the project with its dev tools:
#   pip install -e ".[dev]"
# Re-runs the install only when pyproject.toml changed since the last one. PYTHON=... picks the interpreter.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

stamp=.venv/.installed-pyproject.toml

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
    rm -f "$stamp"
fi

if [[ -f "$stamp" ]] && cmp -s pyproject.toml "$stamp"; then
    exit 0
fi
echo "setup: installing isolated_api and its dev tools into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
cp pyproject.toml "$stamp"
