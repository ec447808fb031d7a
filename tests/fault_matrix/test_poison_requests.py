"""Fault matrix, issue 16 item 2: requests that kill their worker.

| condition                                | before                              | after                              |
|------------------------------------------|-------------------------------------|------------------------------------|
| 10 poison requests (SIGKILL the worker), | backoff 0.5, 1, 2, 4, 8 s; the 6th  | replaced at once each time (0.5-1.2|
| 1 s apart, with_auto_restart() defaults  | death gives up for good             | s to answer again), never gives up |
| worker killed before it served, twice    | backoff 0.5, 1 s (any death)        | crash loop: backoff 0.2, 0.4 s     |
| start-up fails N times in a row          | counted with every other death      | gives up: error, health() says why |
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from features.supervision.supervision import crash_route, ping_route
from isolated_api import Server
from isolated_api.testing import wait_until
from tests.helpers import MainLoop, builder

POISONS = 10


def _answers(url: str) -> int | None:
    try:
        response = httpx.get(f"{url}/ping", timeout=1)
    except httpx.HTTPError:
        return None
    return int(response.json()["pid"]) if response.status_code == 200 else None


def _answered_by_another(url: str, pid: int | None) -> Callable[[], bool]:
    return lambda: _answers(url) not in (None, pid)


def _restarted(server: Server, count: int) -> Callable[[], bool]:
    return lambda: server.restart_count == count


def test_poison_requests_ten_one_second_apart_are_all_survived(
    queues: tuple[Any, Any], main_loop: MainLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Steps, 10 times, at least 1 s apart: GET a route that SIGKILLs its worker (the client's
    connection drops), then ask /ping until a new worker answers. Expect, at the defaults of
    with_auto_restart(): a new worker (another pid) answers every time, each death is logged as
    "restarting at once" (a worker that served is never backed off), 10 restarts, the server
    still running and nothing given up. Prints the time from each poison to the next answer."""
    caplog.set_level(logging.WARNING, logger="isolated_api.supervisor")
    server = (
        builder("poison")
        .routes.with_route("/crash", crash_route)
        .with_route("/ping", ping_route)
        .done()
        .subprocess.with_ipc(*queues)
        .with_auto_restart()
        .done()
        .build()
    )
    server.start_subprocess()
    url = f"http://127.0.0.1:{server.port}"
    recovery: list[float] = []
    try:
        pid = _answers(url)
        assert pid is not None, "the server answers /ping before the first poison"
        next_poison = time.monotonic()
        for _ in range(POISONS):
            # The scenario's pace (one poison a second), not a wait for a condition.
            threading.Event().wait(max(0.0, next_poison - time.monotonic()))
            poisoned = time.monotonic()
            next_poison = poisoned + 1.0
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"{url}/crash", timeout=10)
            wait_until(_answered_by_another(url, pid), 10, "a new worker to answer")
            recovery.append(time.monotonic() - poisoned)
            pid = _answers(url)
        restarts = [r.getMessage() for r in caplog.records if "killed by SIGKILL" in r.getMessage()]
        assert len(restarts) == POISONS and all("restarting at once" in m for m in restarts), restarts
        assert server.restart_count == POISONS and server.is_running
        assert server.health()["gave_up"] is None
    finally:
        server.stop()
    print(f"\npoison -> answering again (s): {', '.join(f'{r:.2f}' for r in recovery)}")


def test_poison_requests_a_worker_killed_before_serving_backs_off(
    queues: tuple[Any, Any], main_loop: MainLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Steps: SIGKILL a fresh worker twice before it served a request (a crash loop as the
    supervisor sees it). Expect the two deaths logged with growing delays (0.2 s, then 0.4 s),
    and a worker answering in the end."""
    caplog.set_level(logging.WARNING, logger="isolated_api.supervisor")
    server = (
        builder("crash-loop")
        .routes.with_route("/ping", ping_route)
        .done()
        .subprocess.with_ipc(*queues)
        .with_auto_restart(backoff=0.2)
        .done()
        .build()
    )
    server.start_subprocess()
    try:
        for restarts in (1, 2):
            process = server.process
            assert process is not None and process.pid is not None
            os.kill(process.pid, signal.SIGKILL)
            wait_until(_restarted(server, restarts), 20, f"restart {restarts}")
        deaths = [r.getMessage() for r in caplog.records if "without serving" in r.getMessage()]
        assert [m.rsplit("restarting in ", 1)[-1] for m in deaths] == ["0.20 s (crash loop)", "0.40 s (crash loop)"]
        assert _answers(f"http://127.0.0.1:{server.port}") is not None
    finally:
        server.stop()
