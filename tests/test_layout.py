"""The layout's promises, checked as a user meets them: the wheel installs one top-level package,
imports beside a project's own ``features`` and ``tests`` packages, and each slice copied alone
into an empty directory passes its own tests with nothing but the wheel (and its dev extras).

The wheel and the virtual environment are made once for this module (~20 s with a warm pip
cache); each slice then runs in a directory of its own, outside this repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SLICES = sorted(p.name for p in (ROOT / "features").iterdir() if (p / "__init__.py").is_file())


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path


def _clean_env() -> dict[str, str]:
    # Nothing of this repository may leak in: no PYTHONPATH, no pytest options, no coverage hooks.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTEST", "COV_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("layout")
    dist = base / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
        base,
        300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = dist.glob("isolated_api-*.whl")
    yield found
    shutil.rmtree(base, ignore_errors=True)


def _venv_with(requirement: str, where: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    pip = _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement], where, 600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return python


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    env_dir = tmp_path_factory.mktemp("dev-venv")
    yield Installed(wheel, _venv_with(f"{wheel}[dev]", env_dir))
    shutil.rmtree(env_dir, ignore_errors=True)


def test_layout_imports_with_the_runtime_dependencies_only(wheel: Path, tmp_path: Path) -> None:
    """Steps: install the wheel with no extras (no msgspec, no appinfra, no test tools); import
    the facade and touch every public name but the two that name their extra.
    Expected: all import; the optional ones fail with an ImportError that names the extra."""
    python = _venv_with(str(wheel), tmp_path / "venv")
    probe = (
        "import isolated_api\n"
        "optional = {'ServerPlugin', 'ENGINE_WIRE_TYPES'}\n"
        "for name in isolated_api.__all__:\n"
        "    if name not in optional:\n"
        "        getattr(isolated_api, name)\n"
        "try:\n"
        "    isolated_api.ServerPlugin\n"
        "except ImportError as exc:\n"
        "    assert 'isolated_api[appinfra]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('ServerPlugin imported without appinfra')\n"
        "try:\n"
        "    isolated_api.ENGINE_WIRE_TYPES\n"
        "except ImportError as exc:\n"
        "    assert 'isolated_api[msgspec]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('ENGINE_WIRE_TYPES imported without msgspec')\n"
    )
    result = _run([str(python), "-c", probe], tmp_path, 120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_layout_wheel_installs_exactly_one_top_level_package(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"isolated_api"}


def test_layout_imports_beside_a_project_with_its_own_features_and_tests(installed: Installed, tmp_path: Path) -> None:
    """Steps: a project directory with its own ``features`` and ``tests`` packages; import the
    facade and the testing helpers from there, then the project's packages.
    Expected: all import, and ``features``/``tests`` are the project's own."""
    for package in ("features", "tests"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"OWNER = 'project {package}'\n")
    probe = (
        "import isolated_api, isolated_api.testing, features, tests\n"
        "assert features.OWNER == 'project features' and tests.OWNER == 'project tests'\n"
        "print(sorted(isolated_api.__all__)[:3])\n"
    )
    result = _run([str(installed.python), "-c", probe], tmp_path, 120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
@pytest.mark.parametrize("slice_name", SLICES)
def test_layout_each_slice_passes_its_tests_copied_alone(installed: Installed, tmp_path: Path, slice_name: str) -> None:
    """Steps: copy ``features/<slice>/`` alone into an empty directory (as ``features/<slice>/``
    beside an empty ``features/__init__.py``: the slice dropped into a user's project), run pytest
    there with the installed wheel and no configuration of this repository.
    Expected: the slice's tests are collected and pass."""
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "__init__.py").write_text("")
    shutil.copytree(
        ROOT / "features" / slice_name, tmp_path / "features" / slice_name, ignore=shutil.ignore_patterns("__pycache__")
    )
    result = _run(
        [str(installed.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"features/{slice_name}"],
        tmp_path,
        560,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout, result.stdout[-2000:]
