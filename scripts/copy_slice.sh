#!/usr/bin/env bash
# Runs one slice's tests as a user who copied it would: bash scripts/copy_slice.sh <slice> [pytest args...]
# The wheel is installed (with its dev extras) into a virtual environment of its own, made once under
# $ISOLATED_API_SLICE_VENV (default /tmp/isolated-api-slice-venv; delete it after changing the library);
# the slice is copied alone into an empty directory as features/<slice>/ beside an empty
# features/__init__.py, and pytest runs there with no configuration of this repository.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
slice="${1:?usage: bash scripts/copy_slice.sh <slice> [pytest args...]}"
shift
[[ -d "features/$slice" ]] || { echo "copy_slice: no features/$slice" >&2; exit 2; }
bash scripts/setup.sh
venv="${ISOLATED_API_SLICE_VENV:-/tmp/isolated-api-slice-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    dist="$(mktemp -d)"
    .venv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation -w "$dist" . >/dev/null
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$(ls "$dist"/*.whl)[dev]"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/features"
: > "$work/features/__init__.py"
cp -r "features/$slice" "$work/features/$slice"
find "$work" -name __pycache__ -prune -exec rm -rf {} +
cd "$work"
env -u PYTHONPATH -u PYTEST_ADDOPTS "$venv/bin/python" -m pytest -q -p no:cacheprovider "features/$slice" "$@"
