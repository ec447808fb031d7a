#!/usr/bin/env bash
# Runs one slice's tests as a user who copied it would: bash scripts/copy_slice.sh <slice> [pytest args...]
# The wheel is installed with its extras, the test packages a user has (pytest, pytest-asyncio, hypothesis,
# httpx) and the clients some slices serve (openai, numpy) into a virtual environment of its own, made once
# under $ISOLATED_API_SLICE_VENV (default /tmp/isolated-api-slice-user-venv; delete it after changing the
# library). The slice is copied alone into an empty directory twice, under names that are not its own: as
# copied_<slice>/ and as myapp/vendored/ (beside myapp/__init__.py), with no features/ package anywhere; then
# `python -m pytest` runs both copies from there with no configuration of this repository.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
slice="${1:?usage: bash scripts/copy_slice.sh <slice> [pytest args...]}"
shift
[[ -f "features/$slice/__init__.py" ]] || { echo "copy_slice: no features/$slice" >&2; exit 2; }
bash scripts/setup.sh
venv="${ISOLATED_API_SLICE_VENV:-/tmp/isolated-api-slice-user-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    dist="$(mktemp -d)"
    .venv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation -w "$dist" . >/dev/null
    # Every extra but the repository's own (dev, demo), as tests/test_layout.py installs them.
    extras="$(.venv/bin/python -c 'import tomllib; extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; print(",".join(sorted(set(extras) - {"dev", "demo"})))')"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "$(ls "$dist"/*.whl)[$extras]" pytest pytest-asyncio hypothesis httpx openai numpy
    rm -rf "$dist"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/myapp"
: > "$work/myapp/__init__.py"
cp -r "features/$slice" "$work/copied_$slice"
cp -r "features/$slice" "$work/myapp/vendored"
find "$work" -name __pycache__ -prune -exec rm -rf {} +
cd "$work"
env -u PYTHONPATH -u PYTEST_ADDOPTS "$venv/bin/python" -m pytest -q -p no:cacheprovider "copied_$slice" myapp/vendored "$@"
