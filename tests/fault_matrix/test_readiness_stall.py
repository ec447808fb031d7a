"""Fault matrix, issue 16 item 5: readiness tells a main loop that reads nothing.

| condition                                        | before                       | after                            |
|--------------------------------------------------|------------------------------|----------------------------------|
| main loop reads nothing; a request times out     | 504, then ready 200 again    | 504, ready 503 until it replies  |
| idle main loop dies (liveness beat enabled)      | ready 200                    | ready 503 after beat_timeout     |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from isolated_api import Engine, ServerBuilder
from isolated_api.testing import running, wait_until
from tests.helpers import MainLoop, builder, upper_route


def _ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health/ready", timeout=5)


def test_readiness_stall_stays_unready_after_the_stuck_request_timed_out(queues: tuple[Any, Any]) -> None:
    """Steps: nobody reads request_q; POST (1 s timeout) -> 504; readiness asked twice after it
    with nothing pending; then a main loop starts and a request is answered. Expect 503 both
    times (pending 0: the request that timed out still waits unread on request_q), and
    server.health() not ready either; then 200 once the main process read it and replied."""
    server = (
        builder("stall")
        .with_timeout(1.0)
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .with_health(deadline=0.5)
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    with running(server) as url:
        assert _ready(url).status_code == 200
        assert httpx.post(f"{url}/upper", json={"text": "a"}, timeout=10).status_code == 504
        for _ in range(2):
            answer = _ready(url)
            assert answer.status_code == 503 and answer.json()["pending"] == 0, answer.json()
            assert "not reading request_q" in answer.json()["problem"]
        assert not server.health()["ready"] and "not reading request_q" in server.health()["problem"]
        loop = MainLoop(*queues).start()
        try:
            # The stuck request is still on request_q: the loop answers it (dropped) and this one.
            assert httpx.post(f"{url}/upper", json={"text": "b"}, timeout=10).status_code == 200
            assert _ready(url).status_code == 200
            assert server.health()["ready"]
        finally:
            loop.stop()


def _beat_after_health(queues: tuple[Any, Any]) -> ServerBuilder:
    return (
        builder("beat")
        .routes.with_health(deadline=0.5)
        .done()
        .subprocess.with_ipc(*queues)
        .with_liveness_beat(1.0)
        .done()
    )


def _beat_before_health(queues: tuple[Any, Any]) -> ServerBuilder:
    # Before the beat was a field of its own, a later with_health reset it: readiness stayed 200.
    return (
        builder("beat")
        .subprocess.with_ipc(*queues)
        .with_liveness_beat(1.0)
        .done()
        .routes.with_health(deadline=0.5)
        .done()
    )


def _beat_as_health_keyword(queues: tuple[Any, Any]) -> ServerBuilder:
    return (
        builder("beat").routes.with_health(deadline=0.5, liveness_beat=1.0).done().subprocess.with_ipc(*queues).done()
    )


@pytest.mark.parametrize("configure", [_beat_after_health, _beat_before_health, _beat_as_health_keyword])
def test_readiness_stall_liveness_beat_sees_an_idle_dead_loop(
    queues: tuple[Any, Any], configure: Callable[[tuple[Any, Any]], ServerBuilder]
) -> None:
    """Steps: readiness expects a beat within 1 s (set with ``.subprocess.with_liveness_beat``
    after or before ``.routes.with_health``, or as its ``liveness_beat`` keyword: the same
    setting, in any order); an Engine beating every 0.2 s; then the engine stops (an idle main
    loop that died). Expect ready 200 while it beats, 503 naming the missing heartbeat after it
    stopped, with no request ever sent, and ``server.health()`` agreeing."""
    server = configure(queues).build()
    engine = Engine(*queues, heartbeat=0.2).start()
    try:
        with running(server) as url:
            wait_until(lambda: _ready(url).status_code == 200, 10, "ready while the engine beats")
            engine.stop()
            wait_until(lambda: _ready(url).status_code == 503, 10, "not ready once the beats stop")
            assert "heartbeat" in _ready(url).json()["problem"]
            assert not server.health()["ready"] and "heartbeat" in server.health()["problem"]
    finally:
        engine.stop()
