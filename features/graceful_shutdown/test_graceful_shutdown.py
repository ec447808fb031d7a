"""stop(): new requests get 503, in-flight ones finish within the timeout, then the child ends;
a child that ignores SIGTERM is killed; stop() twice is harmless; SIGTERM to the child drains."""

from __future__ import annotations

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

from isolated_api import Server
from isolated_api.testing import MainLoop, loopback_builder, wait_until

from .shutdown_routes import (
    LIFESPAN_RECORD_ENV,
    Work,
    answer_upper,
    block_loop_route,
    ping_route,
    resources_lifespan,
    upper_route,
)


def _server(queues: tuple[Any, Any]) -> Server:
    return (
        loopback_builder("shutdown")
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .with_route("/ping", ping_route)
        .with_route("/block", block_loop_route)
        .with_lifespan(resources_lifespan)
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )


def _held_until(release: threading.Event) -> Callable[[Work], Any]:
    """A main process busy until ``release`` is set: deterministic "slow work"."""

    def behaviour(request: Work) -> Any:
        release.wait(60)
        return answer_upper(request)

    return behaviour


def _post(url: str, text: str) -> httpx.Response | None:
    try:
        return httpx.post(url, json={"text": text}, timeout=30)
    except httpx.HTTPError:
        return None


def test_graceful_shutdown_lets_in_flight_requests_finish_and_refuses_new_ones(
    queues: tuple[Any, Any], main_loop: MainLoop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps: 3 requests held by the main process; stop(timeout=20) in a thread; a new request
    during the drain; release the held ones. Expect: the new request 503 + Retry-After, the 3
    in-flight ones 200 with their answers, the lifespan's clean-up only after them, the child
    exits 0, stop() returns."""
    record = tmp_path / "lifespan.txt"
    monkeypatch.setenv(LIFESPAN_RECORD_ENV, str(record))
    release = threading.Event()
    main_loop.behaviour = _held_until(release)
    server = _server(queues)
    process = server.start_subprocess()
    url = f"http://127.0.0.1:{server.port}"
    with ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(_post, f"{url}/upper", f"f{i}") for i in range(3)]
        wait_until(lambda: len(main_loop.received) == 3, 20, "3 requests in the main process")
        stopper = pool.submit(server.stop, 20.0)
        wait_until(lambda: not server.is_running, 10, "the server to start draining")

        def refused() -> bool:
            response = _post(f"{url}/ping", "new")
            return response is not None and response.status_code == 503

        wait_until(refused, 10, "a new request to be refused with 503")
        response = httpx.get(f"{url}/ping", timeout=10)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json() == {"detail": "the server is shutting down"}
        # Draining, with requests in flight: the resources they use are still open.
        assert record.read_text().split() == ["started", str(process.pid)]
        release.set()
        results = [f.result(30) for f in in_flight]
        assert [r.status_code if r else None for r in results] == [200, 200, 200]
        assert sorted(r.json()["text"] for r in results if r) == ["F0", "F1", "F2"]
        stopper.result(30)
    assert record.read_text().split() == ["started", str(process.pid), "stopped", str(process.pid)]
    assert process.exitcode == 0 and server.process is None
    assert server.ipc is not None and server.ipc.pending_count == 0


def test_graceful_shutdown_timeout_ends_requests_that_never_finish(
    queues: tuple[Any, Any], main_loop: MainLoop
) -> None:
    """Steps: a request the main process never answers; stop(timeout=1). Expect stop() to return
    within a few seconds, the client to get 503 (channel closed) or a dropped connection, never a
    hang, and the child process gone."""
    release = threading.Event()
    main_loop.behaviour = _held_until(release)
    server = _server(queues)
    process = server.start_subprocess()
    url = f"http://127.0.0.1:{server.port}"
    try:
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(_post, f"{url}/upper", "stuck")
            wait_until(lambda: len(main_loop.received) == 1, 20, "the request in the main process")
            started = time.monotonic()
            server.stop(timeout=1.0)
            assert time.monotonic() - started < 10
            result = stuck.result(30)
            assert result is None or result.status_code == 503
        assert not process.is_alive()
    finally:
        release.set()


def test_graceful_shutdown_kills_a_child_that_ignores_sigterm(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: a route ignores SIGTERM and blocks the child's event loop; stop(timeout=0.5).
    Expect the drain to be impossible, SIGTERM ignored, and the child killed with SIGKILL."""
    server = _server(queues)
    process = server.start_subprocess()
    url = f"http://127.0.0.1:{server.port}"
    with ThreadPoolExecutor(1) as pool:
        pool.submit(_get_ignoring_errors, f"{url}/block")
        # The blocked loop can't answer: wait until /ping stops answering quickly.
        wait_until(lambda: _ping_times_out(url), 20, "the child's loop to be blocked")
        server.stop(timeout=0.5)
    assert process.exitcode == -signal.SIGKILL


def _get_ignoring_errors(url: str) -> None:
    try:
        httpx.get(url, timeout=30)
    except httpx.HTTPError:
        pass


def _ping_times_out(url: str) -> bool:
    try:
        httpx.get(f"{url}/ping", timeout=0.3)
    except httpx.TimeoutException:
        return True
    return False


def test_graceful_shutdown_stop_twice_and_before_start_is_harmless(
    queues: tuple[Any, Any], main_loop: MainLoop
) -> None:
    server = _server(queues)
    server.stop()
    process = server.start_subprocess()
    assert httpx.get(f"http://127.0.0.1:{server.port}/ping", timeout=10).status_code == 200
    server.stop()
    server.stop()
    assert process.exitcode == 0 and not server.is_running


def test_graceful_shutdown_sigterm_to_the_child_drains(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: a request held in the main process; SIGTERM the child; release. Expect the held
    request to finish with 200 and the child to exit 0 on its own."""
    release = threading.Event()
    main_loop.behaviour = _held_until(release)
    server = _server(queues)
    process = server.start_subprocess()
    url = f"http://127.0.0.1:{server.port}"
    try:
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(_post, f"{url}/upper", "term")
            wait_until(lambda: len(main_loop.received) == 1, 20, "the request in the main process")
            assert process.pid is not None
            os.kill(process.pid, signal.SIGTERM)
            wait_until(lambda: _refused(url), 10, "the child to start draining")
            release.set()
            result = held.result(30)
            assert result is not None and result.status_code == 200 and result.json()["text"] == "TERM"
        # The server's supervisor reaps the worker too: wait for the exit code rather than racing
        # its waitpid with a join() here.
        wait_until(lambda: process.exitcode is not None, 20, "the worker to exit")
        assert process.exitcode == 0
    finally:
        release.set()
        server.stop()


def _refused(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ping", timeout=2).status_code == 503
    except httpx.HTTPError:
        return False
