"""Capacity checks: session-wide servers, and a table of the figures measured, printed at the end
of the run (and by each test as it goes, with ``-s``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from isolated_api import Server
from stress.figures import Figures
from stress.servers import ceiling_server, engine_server, ipc_server

_FIGURES = pytest.StashKey[Figures]()


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    return request.config.stash.setdefault(_FIGURES, Figures())


@pytest.fixture(scope="session")
def stress_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stress-logs")


@pytest.fixture(scope="session")
def ipc(stress_logs: Path) -> Iterator[tuple[Server, str]]:
    with ipc_server(stress_logs) as served:
        yield served


@pytest.fixture(scope="session")
def ipc_batched(stress_logs: Path) -> Iterator[tuple[Server, str]]:
    with ipc_server(stress_logs, batched=True) as served:
        yield served


@pytest.fixture(scope="session")
def engine_ipc(stress_logs: Path) -> Iterator[tuple[Server, str]]:
    with engine_server(stress_logs) as served:
        yield served


@pytest.fixture(scope="session")
def ceiling() -> Iterator[tuple[int, str]]:
    with ceiling_server() as served:
        yield served


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash.get(_FIGURES, None)
    if figures is None or not figures.tables:
        return
    terminalreporter.section("stress figures")
    machine = _machine()
    terminalreporter.write_line(machine)
    for table in figures.tables:
        terminalreporter.write_line(table)


def _machine() -> str:
    import os
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    return (
        f"machine: {os.cpu_count()} cores {model}, Python {platform.python_version()}, {platform.system()}"
        f"{_idle_polling()}"
    )


def _idle_polling() -> str:
    # In a VM whose guest idles with cpuidle-haltpoll, this says how long an idle vCPU polls
    # before it halts. At 0 every wake-up of an idle vCPU costs a VM exit and entry (~40 us a
    # pipe hop here, against ~7 us at the kernel's default of 200,000 ns): the one-connection
    # latencies depend on it more than on any code (README, Performance).
    try:
        with open("/sys/devices/system/cpu/cpuidle/current_driver") as driver:
            if driver.read().strip() != "haltpoll":
                return ""
        with open("/sys/module/haltpoll/parameters/guest_halt_poll_ns") as poll:
            return f", idle vCPUs poll {int(poll.read())} ns before halting (cpuidle-haltpoll)"
    except (OSError, ValueError):
        return ""
