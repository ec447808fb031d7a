"""Health routes over real HTTP in the child: liveness, readiness that follows the main process,
server-wide figures, configurable paths, and the same facts from server.health()."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from features.health.health_checks import Work, answer_upper, ping_route, upper_route
from isolated_api import ConfigError, Server
from isolated_api.testing import MainLoop, loopback_builder, running, wait_until


def _server(queues: tuple[Any, Any], deadline: float = 0.5, max_pending: int = 50) -> Server:
    return (
        loopback_builder("health")
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .with_route("/ping", ping_route)
        .with_health(deadline=deadline)
        .done()
        .subprocess.with_ipc(*queues)
        .with_max_pending(max_pending)
        .done()
        .build()
    )


def _held_until(release: threading.Event) -> Callable[[Work], Any]:
    """A main process that stopped answering until ``release`` is set."""

    def behaviour(request: Work) -> Any:
        release.wait(60)
        return answer_upper(request)

    return behaviour


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


def test_health_ready_turns_503_when_the_main_process_stops_answering(
    queues: tuple[Any, Any], main_loop: MainLoop
) -> None:
    """Steps: the main loop holds every request (it stopped answering); send one request.
    Expect readiness 503 once the request is older than the 0.5 s deadline with no reply, liveness
    still 200, health traffic answered although the user request is stuck, and readiness back to
    200 once the main process answers again."""
    release = threading.Event()
    main_loop.behaviour = _held_until(release)
    server = _server(queues)
    with running(server) as url, ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(httpx.post, f"{url}/upper", json={"text": "stuck"}, timeout=30)
        main_loop.wait_received(1)

        def ready_status() -> int:
            return httpx.get(f"{url}/health/ready", timeout=10).status_code

        wait_until(lambda: ready_status() == 503, 10, "readiness to turn 503")
        body = httpx.get(f"{url}/health/ready", timeout=10).json()
        assert body["status"] == "unavailable" and "has not answered" in body["problem"]
        assert body["pending"] == 1
        assert httpx.get(f"{url}/health/live", timeout=10).status_code == 200
        assert not server.health()["ready"]
        release.set()
        assert stuck.result(30).status_code == 200
        wait_until(lambda: ready_status() == 200, 10, "readiness to recover")


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
