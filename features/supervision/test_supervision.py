"""Auto-restart: a dead worker is replaced with fresh pipes and serves again (at once if it had
served); a worker that keeps failing at start-up is retried with growing delays, then given up
on, visibly."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from isolated_api import ConfigError, Server
from isolated_api.testing import MainLoop, loopback_builder, running, wait_until

from .supervision import (
    FAIL_MARKER_ENV,
    Work,
    answer_upper,
    crash_route,
    fail_if_marked,
    ping_route,
    upper_route,
)


def _server(queues: tuple[Any, Any], **restart: Any) -> Server:
    return (
        loopback_builder("supervised")
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .with_route("/ping", ping_route)
        .with_route("/crash", crash_route)
        .with_lifespan(fail_if_marked)
        .done()
        .subprocess.with_ipc(*queues)
        .with_auto_restart(**restart)
        .done()
        .build()
    )


def _post(url: str, text: str) -> int | None:
    try:
        return httpx.post(url, json={"text": text}, timeout=30).status_code
    except httpx.HTTPError:
        return None


def test_supervision_restart_budget_is_checked_when_configured() -> None:
    # A budget that could never restart anything is a configuration mistake, caught at once.
    with pytest.raises(ConfigError, match="max_restarts"):
        loopback_builder().subprocess.with_auto_restart(max_restarts=0)
    with pytest.raises(ConfigError, match="window"):
        loopback_builder().subprocess.with_auto_restart(window=0)


def _held_until(release: threading.Event) -> Callable[[Work], Any]:
    """A main process busy until ``release`` is set: deterministic "slow work"."""

    def behaviour(request: Work) -> Any:
        release.wait(60)
        return answer_upper(request)

    return behaviour


def test_supervision_sigkill_with_requests_in_flight_ten_times(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps, 10 times: 20 requests in flight (held by the main process), SIGKILL the worker.
    Expect each time: the in-flight clients see the connection drop, the main process hears which
    20 ids were abandoned, a new worker answers within 2 s on the same port, and 100 requests after
    the restart all succeed."""
    release = threading.Event()
    held = _held_until(release)
    main_loop.behaviour = lambda r: held(r) if r.text.startswith("held") else answer_upper(r)
    abandoned: list[list[Any]] = []
    server = _server(queues, max_restarts=20, backoff=0.0)
    server.add_child_exit_callback(lambda code, ids: abandoned.append(ids))
    server.start_subprocess()
    port = server.port
    url = f"http://127.0.0.1:{port}"
    recovery: list[float] = []
    try:
        with ThreadPoolExecutor(20) as pool, httpx.Client(timeout=10) as client:
            for round_ in range(10):
                release.clear()
                expected = len(main_loop.received) + 20
                in_flight = [pool.submit(_post, f"{url}/upper", f"held{round_}-{i}") for i in range(20)]
                main_loop.wait_received(expected)
                victim = server.process
                assert victim is not None and victim.pid is not None
                os.kill(victim.pid, signal.SIGKILL)
                killed = time.monotonic()
                assert [f.result(30) for f in in_flight] == [None] * 20
                wait_until(lambda: _answers(url), 10, "a new worker to answer")
                recovery.append(time.monotonic() - killed)
                assert server.port == port and server.process is not None and server.process.pid != victim.pid
                statuses = [client.post(f"{url}/upper", json={"text": f"a{i}"}).status_code for i in range(100)]
                assert statuses == [200] * 100
                release.set()
        wait_until(lambda: len(abandoned) == 10, 10, "10 exit reports")
        assert [len(ids) for ids in abandoned] == [20] * 10
        assert server.restart_count == 10
        assert max(recovery) < 2.0, f"recovery times {recovery}"
    finally:
        release.set()
        server.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ping", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_supervision_start_up_failure_is_not_retried_in_a_loop(
    queues: tuple[Any, Any], main_loop: MainLoop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps: the first start succeeds; then every start-up fails (a marker file); SIGKILL the
    worker (before it served: a crash loop, so backed off too). Expect 3 restart attempts spaced
    by a growing backoff, then the server gives up, visibly: is_running turns False, the exit
    callback heard each death, and health() says why (3 failed start-ups, the exit code)."""
    marker = tmp_path / "fail"
    monkeypatch.setenv(FAIL_MARKER_ENV, str(marker))
    exits: list[float] = []
    server = _server(queues, max_restarts=3, backoff=0.2, window=60)
    server.add_child_exit_callback(lambda code, ids: exits.append(time.monotonic()))
    server.start_subprocess()
    try:
        marker.touch()
        assert server.process is not None and server.process.pid is not None
        os.kill(server.process.pid, signal.SIGKILL)
        wait_until(lambda: not server.is_running, 30, "the server to give up")
        assert len(exits) == 4  # the kill, then three failed start-ups
        gaps = [b - a for a, b in itertools.pairwise(exits)]
        assert all(gap >= 0.2 * 2**n for n, gap in enumerate(gaps)), gaps
        assert server.restart_count == 0
        health = server.health()
        assert not health["running"] and not health["ready"]
        assert health["problem"] == health["gave_up"]
        assert "3 start-up(s) in a row failed (the last exited with code 3 before it was ready)" in health["gave_up"]
    finally:
        server.stop()


def test_supervision_first_start_failure_raises(
    queues: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "fail"
    marker.touch()
    monkeypatch.setenv(FAIL_MARKER_ENV, str(marker))
    server = _server(queues)
    with pytest.raises(RuntimeError, match="exited during start-up with code 3"):
        server.start_subprocess()
    assert not server.is_running and server.process is None


def test_supervision_a_worker_that_crashes_is_replaced(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: with auto-restart, GET a route that SIGKILLs its own worker. Expect that client's
    connection to drop, the exit reported with the signal, a new worker (another pid) serving on the
    same port, and the main process's work answered by it."""
    exits: list[int | None] = []
    server = _server(queues, max_restarts=3, backoff=0.0)
    server.add_child_exit_callback(lambda code, ids: exits.append(code))
    with running(server) as url:
        first = httpx.get(f"{url}/ping", timeout=10).json()["pid"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/crash", timeout=10)
        wait_until(lambda: server.restart_count == 1 and _answers(url), 10, "the replacement worker")
        assert exits == [-signal.SIGKILL]
        assert httpx.get(f"{url}/ping", timeout=10).json()["pid"] != first
        assert httpx.post(f"{url}/upper", json={"text": "again"}, timeout=10).json()["text"] == "AGAIN"
