"""Health routes over real HTTP in the child: liveness, readiness that follows the main process,
server-wide figures, configurable paths, and the same facts from server.health()."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from isolated_api import ConfigError, Server
from isolated_api.testing import MainLoop, loopback_builder, running, wait_until

from .health_checks import Work, answer_upper, ping_route, upper_route


def _server(queues: tuple[Any, Any], deadline: float = 0.5, max_pending: int = 50, timeout: float = 10.0) -> Server:
    return (
        loopback_builder("health", timeout=timeout)
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .with_route("/ping", ping_route)
        .with_health(deadline=deadline)
        .done()
        .subprocess.with_ipc(*queues)
        .with_max_pending(max_pending)
        .done()
        .build()
    )


@contextmanager
def _plain_loop(queues: tuple[Any, Any], release: threading.Event | None) -> Iterator[list[Any]]:
    """The main loop as a user writes it, on a thread: one request at a time, skipping what it
    doesn't know; each ``Work`` answered once ``release`` is set (None: never, as if it knew no
    ``Work``). Yields the requests it read."""
    request_q, response_q = queues
    read: list[Any] = []

    def loop() -> None:
        while (request := request_q.get()) is not None:
            read.append(request)
            if isinstance(request, Work) and release is not None:
                release.wait(60)  # a long generation
                response_q.put(answer_upper(request))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield read
    finally:
        if release is not None:
            release.set()
        request_q.put(None)
        thread.join(10)


def _post(url: str, text: str) -> httpx.Response:
    return httpx.post(f"{url}/upper", json={"text": text}, timeout=30)


def test_health_live_and_ready_report_the_facts(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    server = _server(queues)
    with running(server) as url:
        live = httpx.get(f"{url}/health/live", timeout=10)
        assert live.status_code == 200 and live.json()["status"] == "alive"
        assert server.process is not None and live.json()["pid"] == server.process.pid
        httpx.post(f"{url}/upper", json={"text": "x"}, timeout=10)
        ready = httpx.get(f"{url}/health/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and body["problem"] is None
        assert (body["pending"], body["max_pending"], body["restarts"]) == (0, 50, 0)
        assert {"rejected", "dropped", "uptime", "last_error"} <= set(body)
        assert len(main_loop.received) == 1  # probes never reach the user's loop
        facts = server.health()
        assert facts["running"] and facts["ready"] and facts["workers_alive"] == 1
        assert facts["forwarded"] == 1 and facts["pending"] == 0


def test_health_ready_stays_200_while_the_main_process_serves_one_long_request(queues: tuple[Any, Any]) -> None:
    """Steps: a main loop serving one request at a time holds one (a long generation), with no
    other traffic, for four times the 0.5 s deadline; then it answers. Expect /health/ready 200
    and server.health() ready all along (the loop reads request_q: busy, not stuck), then 200."""
    release = threading.Event()
    server = _server(queues)
    with _plain_loop(queues, release) as read, running(server) as url, ThreadPoolExecutor(1) as pool:
        long = pool.submit(_post, url, "long")
        wait_until(lambda: len(read) == 1, 10, "the request read")
        until = time.monotonic() + 4 * 0.5

        def ready_all_along() -> bool:
            answer = httpx.get(f"{url}/health/ready", timeout=10)
            assert answer.status_code == 200, answer.json()
            assert server.health()["ready"], server.health()
            return time.monotonic() > until

        wait_until(ready_all_along, 30, "2 s of readiness")
        release.set()
        assert long.result(30).json()["text"] == "LONG"


def test_health_ready_turns_503_when_the_main_process_stops_reading(queues: tuple[Any, Any]) -> None:
    """Steps: a main loop serving one request at a time holds the first; a second request waits
    unread behind it. Expect readiness 503 once the second waited unread past the 0.5 s deadline,
    naming it, and server.health() not ready either; liveness still 200; health traffic answered
    although the main process is stuck; readiness back to 200 once the loop reads again."""
    release = threading.Event()
    server = _server(queues)
    with _plain_loop(queues, release) as read, running(server) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(_post, url, "first")
        wait_until(lambda: len(read) == 1, 10, "the first request read")
        second = pool.submit(_post, url, "second")

        def ready_status() -> int:
            return httpx.get(f"{url}/health/ready", timeout=10).status_code

        wait_until(lambda: ready_status() == 503, 10, "readiness to turn 503")
        body = httpx.get(f"{url}/health/ready", timeout=10).json()
        assert body["status"] == "unavailable" and "not reading request_q: 1 request(s)" in body["problem"]
        assert body["pending"] == 2
        assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200
        assert not server.health()["ready"] and "not reading request_q" in server.health()["problem"]
        release.set()
        assert [first.result(30).status_code, second.result(30).status_code] == [200, 200]
        wait_until(lambda: ready_status() == 200, 10, "readiness to recover")
        assert server.health()["ready"]


def test_health_route_and_server_health_agree_when_requests_go_unanswered(queues: tuple[Any, Any]) -> None:
    """Steps: a main loop that reads every request and answers none (it knows none of them); one
    request times out after 1 s. Expect a 504, then /health/ready 503 and server.health() not
    ready, both because a request timed out unanswered."""
    server = _server(queues, timeout=1.0)
    with _plain_loop(queues, None), running(server) as url:
        assert _post(url, "lost").status_code == 504

        def ready_status() -> int:
            return httpx.get(f"{url}/health/ready", timeout=10).status_code

        # The worker tells the relay of the timeout right after its 504, not before.
        wait_until(lambda: ready_status() == 503, 10, "readiness to turn 503")
        answer = httpx.get(f"{url}/health/ready", timeout=10)
        assert answer.status_code == 503 and "timed out unanswered" in answer.json()["problem"]
        facts = server.health()
        assert not facts["ready"] and "timed out unanswered" in facts["problem"], facts


def test_health_paths_are_configurable_and_can_be_turned_off(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    server = (
        loopback_builder("paths")
        .routes.with_route("/ping", ping_route)
        .with_health(live_path="/livez", ready_path="/readyz")
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    with running(server) as url:
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        assert httpx.get(f"{url}/health/live", timeout=10).status_code == 404
    off = loopback_builder("off").routes.with_route("/ping", ping_route).without_health().done().build()
    assert "/health/live" not in off.app.openapi()["paths"]


def test_health_settings_are_checked_when_configured() -> None:
    # A path without its '/', the same path twice or a deadline of zero are mistakes caught at once.
    with pytest.raises(ConfigError, match="start with"):
        loopback_builder().routes.with_health(live_path="health")
    with pytest.raises(ConfigError, match="differ"):
        loopback_builder().routes.with_health(live_path="/h", ready_path="/h")
    with pytest.raises(ConfigError, match="deadline"):
        loopback_builder().routes.with_health(deadline=0)
