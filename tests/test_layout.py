"""The layout's promises, checked as a user meets them: the wheel installs one top-level package,
imports beside a project's own ``features`` and ``tests`` packages, and each slice copied alone under
another name (a top-level folder, and a subpackage of the user's app) passes its own tests with nothing
but the wheel, its extras and the test packages a user has; without an extra, a slice that needs it
skips and says what to install. The slices' independence contract covers every slice.

The wheel and the virtual environments are made once for this module (~20-40 s each with a warm pip
cache); each slice then runs in a directory of its own, outside this repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
SLICES = sorted(p.name for p in (ROOT / "features").iterdir() if (p / "__init__.py").is_file())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What a user who copies a slice has: the test packages the slices' tests import (not our [dev]: no
# pytest-timeout, no linters), and the clients of what some slices serve (an OpenAI-style API, arrays).
USER_TEST_PACKAGES = ("pytest", "pytest-asyncio", "hypothesis", "httpx")
SERVED_CLIENTS = ("openai", "numpy")
# Every extra a slice may need; dev and demo are this repository's own.
EXTRAS = sorted(set(PYPROJECT["project"]["optional-dependencies"]) - {"dev", "demo"})
# The package a copy goes into inside the user's app, and the copy's name there: neither is the slice's
# name, so nothing in the slice may assume where it lives.
APP_PACKAGE, IN_APP_NAME = "myapp", "vendored"


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


def _venv_with(requirements: Sequence[str], where: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    pip = _run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements], where, 600
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return python


@pytest.fixture(scope="module")
def user_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A user's environment for the slices: the wheel with every extra, the test packages, the clients."""
    env_dir = tmp_path_factory.mktemp("user-venv")
    yield _venv_with([f"{wheel}[{','.join(EXTRAS)}]", *USER_TEST_PACKAGES, *SERVED_CLIENTS], env_dir)
    shutil.rmtree(env_dir, ignore_errors=True)


def _copy_slice(slice_name: str, project: Path, in_app_name: str = IN_APP_NAME) -> tuple[str, str]:
    """Copies the slice into ``project`` twice, as a user would: a top-level folder of another name,
    and a subpackage of the user's app; returns both folders, relative to ``project``."""
    top_level, in_app = f"copied_{slice_name}", f"{APP_PACKAGE}/{in_app_name}"
    (project / APP_PACKAGE).mkdir(parents=True, exist_ok=True)
    (project / APP_PACKAGE / "__init__.py").write_text("")
    for folder in (top_level, in_app):
        shutil.copytree(ROOT / "features" / slice_name, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return top_level, in_app


# Run by the runtime-only environment: touches every public name, checks what each optional one
# says without its extra, then serves a subprocess-mode server (a worker process, real HTTP), all
# without pyzmq ever being imported. A file, not ``-c``: the worker is started with spawn.
RUNTIME_ONLY_PROBE = """
import importlib.util
import sys
import urllib.request

import isolated_api

EXTRAS = {
    "ServerPlugin": "isolated_api[appinfra]",
    "ENGINE_WIRE_TYPES": "isolated_api[msgspec]",
    "EngineHost": "isolated_api[remote]",
    "EngineBindError": "isolated_api[remote]",
}


def refused(what, touch, extra):
    try:
        touch()
    except ImportError as exc:
        assert extra in str(exc), (what, exc)
    else:
        raise AssertionError(f"{what} worked without {extra}")


def main():
    assert importlib.util.find_spec("zmq") is None, "pyzmq is installed: not a runtime-only environment"
    for name in isolated_api.__all__:
        if name not in EXTRAS:
            getattr(isolated_api, name)
    for name, extra in EXTRAS.items():
        refused(name, lambda: getattr(isolated_api, name), extra)
    remote, builder = "isolated_api[remote]", isolated_api.ServerBuilder("remote")
    refused(".engines.with_engines", lambda: builder.engines.with_engines("tcp://h:1"), remote)
    refused(".subprocess.with_engines", lambda: builder.subprocess.with_engines("tcp://h:1"), remote)
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    request_q, response_q = context.Queue(), context.Queue()
    server = (
        isolated_api.ServerBuilder("runtime-only")
        .with_host("127.0.0.1")
        .with_port(0)
        .subprocess.with_ipc(request_q, response_q)
        .done()
        .build()
    )
    server.start_subprocess()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health/live", timeout=30) as answer:
            assert answer.status == 200, answer.status
    finally:
        server.stop()
    assert "zmq" not in sys.modules


if __name__ == "__main__":
    main()
"""


def test_layout_imports_with_the_runtime_dependencies_only(wheel: Path, tmp_path: Path) -> None:
    """Steps: install the wheel with no extras (no msgspec, no appinfra, no pyzmq, no test tools);
    import the facade and touch every public name but those that need an extra; then start a
    subprocess-mode server and ask its liveness route over HTTP.
    Expected: all import; each optional name, and ``.engines.with_engines`` /
    ``.subprocess.with_engines``, fail with an ImportError that names the extra
    (``isolated_api[remote]`` for remote engines); the server answers 200 and pyzmq was never
    imported."""
    python = _venv_with([str(wheel)], tmp_path / "venv")
    probe = tmp_path / "probe.py"
    probe.write_text(RUNTIME_ONLY_PROBE)
    result = _run([str(python), str(probe)], tmp_path, 120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_layout_wheel_installs_exactly_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"isolated_api"}


def test_layout_imports_beside_a_project_with_its_own_features_and_tests(user_python: Path, tmp_path: Path) -> None:
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
    result = _run([str(user_python), "-c", probe], tmp_path, 120)
    assert result.returncode == 0, result.stdout + result.stderr


def _key(node_id: str, folder: str) -> str:
    """A test's name within its copy, the same for both copies and as JUnit spells it:
    ``test_mod.test_x[param]`` (a parameter id is kept as it is: it may hold '/', '.' or '::')."""
    path, _, test = node_id.removeprefix(f"{folder}/").partition("::")
    name, bracket, params = test.partition("[")
    return f"{path.removesuffix('.py').replace('/', '.')}.{name.replace('::', '.')}{bracket}{params}"


def _collected(python: Path, project: Path, folders: Sequence[str]) -> dict[str, dict[str, str]]:
    """For each folder, its tests' node ids by their name within the copy (``pytest --collect-only``)."""
    result = _run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", *folders], project, 300
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    ids = [line for line in result.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    return {folder: {_key(i, folder): i for i in ids if i.startswith(f"{folder}/")} for folder in folders}


def _outcomes(report: Path, folder: str) -> dict[str, str]:
    """Each test that ran from the copy in ``folder`` (by its name within the copy) and how it ended,
    from pytest's JUnit XML report."""
    package = folder.replace("/", ".")
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        classname = case.get("classname", "")
        if classname.startswith(f"{package}."):
            ended = [child for child in case if child.tag in ("failure", "error", "skipped")]
            if not ended:
                outcome = "passed"
            elif ended[0].get("type") == "pytest.xfail":  # JUnit has no xfail: pytest reports it as a skip
                outcome = "xfailed"
            else:
                outcome = f"{ended[0].tag}: {ended[0].get('message', '')}"
            outcomes[f"{classname.removeprefix(f'{package}.')}.{case.get('name')}"] = outcome
    return outcomes


@pytest.mark.timeout(900)
@pytest.mark.parametrize("slice_name", SLICES)
def test_layout_each_slice_passes_its_tests_copied_under_other_names(
    user_python: Path, tmp_path: Path, slice_name: str
) -> None:
    """Steps: copy ``features/<slice>/`` alone into an empty project twice, as ``copied_<slice>/`` and
    as ``myapp/vendored/`` (beside ``myapp/__init__.py``), with no ``features`` package anywhere; with
    the user's environment (the wheel, its extras, the test packages) and no configuration of this
    repository, collect both copies, then run each test once, in one copy or the other by turns (the
    whole slice twice would double the cost of this module), with ``python -m pytest`` from the
    project's directory as the README says, warnings as errors and xfails strict as in this repository's run.
    Expected: both copies collect the same tests; each test passes or fails as marked (xfail), none is
    skipped (the environment has every package a slice may ask for); each copy ran its share (so
    HTTP children imported the handlers under both names)."""
    top_level, in_app = _copy_slice(slice_name, tmp_path)
    collected = _collected(user_python, tmp_path, (top_level, in_app))
    names = sorted(collected[top_level])
    assert names, f"no test collected in {top_level}"
    assert names == sorted(collected[in_app]), f"the two copies collected different tests:\n{collected}"
    chosen = {name: (top_level, in_app)[index % 2] for index, name in enumerate(names)}
    report = tmp_path / "report.xml"
    result = _run(
        [
            *(str(user_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"),
            # This is the slices' only run in the default suite (pyproject's testpaths leave features/
            # out), so it keeps the suite's strictness: a warning is an error, an xfail that passes fails.
            *("-W", "error", "-o", "xfail_strict=true", "-o", "asyncio_default_fixture_loop_scope=function"),
            *(collected[folder][name] for name, folder in chosen.items()),
        ],
        tmp_path,
        860,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    ran = {folder: _outcomes(report, folder) for folder in (top_level, in_app)}
    for folder in (top_level, in_app):
        assert set(ran[folder]) == {name for name, where in chosen.items() if where == folder}, ran
    bad = {
        name: outcome
        for outcomes in ran.values()
        for name, outcome in outcomes.items()
        if outcome not in ("passed", "xfailed")
    }
    assert not bad, bad


@pytest.fixture(scope="module")
def bare_user_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A user's environment without any extra: the wheel and the test packages only."""
    env_dir = tmp_path_factory.mktemp("bare-user-venv")
    yield _venv_with([str(wheel), *USER_TEST_PACKAGES], env_dir)
    shutil.rmtree(env_dir, ignore_errors=True)


def test_layout_slices_without_their_extras_skip_and_say_what_to_install(
    bare_user_python: Path, tmp_path: Path
) -> None:
    """Steps: copy every slice (under other names, top-level and in an app package) into one project;
    collect their tests with the wheel and the test packages only: no extra, no served client.
    Expected: every module imports or skips (pytest succeeds, no collection error), and every skip says
    what to install (``pip install ...``)."""
    folders = [folder for name in SLICES for folder in _copy_slice(name, tmp_path, f"{IN_APP_NAME}_{name}")]
    result = _run(
        [str(bare_user_python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "-rs", *folders],
        tmp_path,
        300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("pip install" in line for line in skips), "\n".join(skips)
    # Remote engines need pyzmq, an extra since issue 26: the slice says so.
    remote = [line for line in skips if "remote_engines" in line]
    assert remote and all("isolated_api[remote]" in line for line in remote), "\n".join(skips)


def test_layout_the_independence_contract_covers_every_slice() -> None:
    """Steps: resolve the modules of the "Slices are independent" contract in pyproject.toml against
    the import graph of ``features``, wildcards as lint-imports expands them.
    Expected: exactly the slices, ``features.<dir>`` for every directory of features/ with an
    ``__init__.py``: a slice added without being covered fails here. And every directory of features/
    is such a package (a folder without ``__init__.py`` would escape both this and the copy test)."""
    folders = {p.name for p in (ROOT / "features").iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders == set(SLICES), f"not a package: {sorted(folders - set(SLICES))}"
    (contract,) = [
        c
        for c in PYPROJECT["tool"]["importlinter"]["contracts"]
        if c["type"] == "independence" and c["name"].startswith("Slices are independent")
    ]
    graph = grimp.build_graph("features")
    covered: set[str] = set()
    for expression in contract["modules"]:
        covered |= graph.find_matching_modules(expression) if "*" in expression else {expression}
    assert covered == {f"features.{name}" for name in SLICES}
