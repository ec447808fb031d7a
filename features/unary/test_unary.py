"""Unary requests over real HTTP through a real child and a real main-process loop: replies reach
their own waiter, and every infrastructure condition has an honest status (DESIGN.md inv. 5)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from isolated_api import ErrorReply
from isolated_api.testing import MainLoop, loopback_builder, running, serving_direct, wait_until

from .unary import (
    Upper,
    UpperDone,
    answer_upper,
    count_route,
    held_until,
    pending_route,
    ping_route,
    upper_route,
)


async def _gather_posts(url: str, bodies: list[dict[str, Any]], timeout: float = 30.0) -> list[httpx.Response]:
    # One connection per request, so they are all in flight at once.
    limits = httpx.Limits(max_connections=len(bodies) + 1)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return list(await asyncio.gather(*(client.post(url, json=b) for b in bodies)))


def _server(
    queues: tuple[Any, Any], timeout: float = 10.0, log_file: Path | None = None, max_pending: int = 100
) -> Any:
    b = (
        loopback_builder("unary", timeout)
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .with_route("/ping", ping_route)
        .with_route("/pending", pending_route)
        .done()
        .subprocess.with_ipc(*queues)
        .with_max_pending(max_pending)
        .done()
    )
    if log_file is not None:
        b.subprocess.with_log_file(str(log_file))
    return b.build()


def test_unary_reply_comes_from_the_main_process(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: start the child, POST /upper. Expect 200 with the main process's answer and pid."""
    server = _server(queues)
    with running(server) as url:
        response = httpx.post(f"{url}/upper", json={"text": "hello"}, timeout=10)
        assert response.status_code == 200
        assert response.json() == {"text": "HELLO", "main_pid": os.getpid()}
        child = httpx.get(f"{url}/ping", timeout=10).json()
        assert child["pid"] != os.getpid()
        assert server.process is not None and child["pid"] == server.process.pid


def test_unary_concurrent_replies_reach_their_own_waiters(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """200 concurrent requests answered by the main process in a shuffled order: each client gets
    the answer to its own text."""
    rng = random.Random(7)
    bodies = [{"text": f"req-{i}", "delay": rng.choice([0.0, 0.001, 0.01, 0.05])} for i in range(200)]
    server = _server(queues, max_pending=256)
    with running(server) as url:
        responses = asyncio.run(_gather_posts(f"{url}/upper", bodies))
        assert [r.status_code for r in responses] == [200] * 200
        assert [r.json()["text"] for r in responses] == [str(b["text"]).upper() for b in bodies]
        assert httpx.get(f"{url}/pending", timeout=10).json()["pending"] == 0


def test_unary_timeout_is_504_and_the_late_reply_goes_nowhere(
    queues: tuple[Any, Any], main_loop: MainLoop, tmp_path: Path
) -> None:
    """Steps: the main process holds the first request past the 0.5 s timeout, then answers it
    while a second request waits. Expect 504 (no traceback logged) for the first, the second
    gets its own answer, and the late reply is dropped and counted."""
    release = threading.Event()
    held = held_until(release)
    main_loop.behaviour = lambda r: held(r) if r.text == "slow" else answer_upper(r)
    log = tmp_path / "child.log"
    server = _server(queues, timeout=0.5, log_file=log)
    with running(server) as url:
        first = httpx.post(f"{url}/upper", json={"text": "slow"}, timeout=10)
        assert first.status_code == 504
        assert "no reply" in first.json()["detail"]
        # The worker tells the relay to forget the id; once it has, the late reply can only be dropped.
        wait_until(lambda: server.ipc.pending_count == 0, 10, "the relay to forget the timed-out id")
        dropped = server.ipc.dropped_count
        release.set()
        wait_until(lambda: server.ipc.dropped_count == dropped + 1, 10, "the late reply to be dropped")
        second = httpx.post(f"{url}/upper", json={"text": "fast"}, timeout=10)
        assert second.status_code == 200 and second.json()["text"] == "FAST"
        assert httpx.get(f"{url}/pending", timeout=10).json()["pending"] == 0
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize(("status", "expected"), [(404, 404), (422, 422), (503, 503), (200, 500), (999, 500)])
def test_unary_error_reply_becomes_its_status(
    queues: tuple[Any, Any], main_loop: MainLoop, status: int, expected: int
) -> None:
    """Steps: the main process answers ErrorReply(status). Expect that status when it is an error
    status, else 500, with the main process's message as ``detail``."""
    server = _server(queues)
    with running(server) as url:
        response = httpx.post(f"{url}/upper", json={"text": "bad", "fail_status": status}, timeout=10)
        assert response.status_code == expected
        assert response.json() == {"detail": "refused 'bad'"}


def test_unary_unknown_duplicate_and_idless_replies_are_dropped(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """The main process answers each request three extra times: a duplicate, an unknown id and an
    object with no id. Expect each client to get exactly its own answer, and 3 drops per request."""

    def noisy(request: Upper) -> UpperDone | ErrorReply:
        main_loop.response_q.put(ErrorReply("no-such-id", "stray"))
        main_loop.response_q.put("no id at all")
        reply = answer_upper(request)
        main_loop.response_q.put(reply)
        return reply

    main_loop.behaviour = noisy
    server = _server(queues)
    with running(server) as url:
        for i in range(5):
            response = httpx.post(f"{url}/upper", json={"text": f"n{i}"}, timeout=10)
            assert response.status_code == 200 and response.json()["text"] == f"N{i}"
        wait_until(lambda: server.ipc.dropped_count == 15, 10, "15 stray replies to be dropped")
        assert server.ipc.pending_count == 0


def test_unary_invalid_body_is_422(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Invalid bodies are 422, including those FastAPI's own 422 would fail to render (a 500):
    infinity, NaN, a lone surrogate."""
    b = loopback_builder("invalid").routes.with_route("/count", count_route, methods=["POST"]).done()
    server = b.subprocess.with_ipc(*queues).done().build()
    with running(server) as url:
        for body in (b"not json", b'{"n": "x"}', b'{"n": 1e400}', b'{"n": NaN}', b'{"n": "\\ud800"}'):
            response = httpx.post(
                f"{url}/count", content=body, headers={"content-type": "application/json"}, timeout=10
            )
            assert response.status_code == 422, (body, response.text)
            assert response.json()["detail"]
        assert httpx.post(f"{url}/count", json={"n": 3}, timeout=10).json() == {"n": 3}
        assert main_loop.received == []


def test_unary_direct_mode_serves_in_this_process() -> None:
    """Steps: build without with_ipc, start() in a thread, GET /ping, stop(). Expect this pid."""
    server = loopback_builder("direct").routes.with_route("/ping", ping_route).done().build()
    assert not server.is_subprocess_mode and server.ipc is None
    with pytest.raises(RuntimeError, match="subprocess mode"):
        server.start_subprocess()
    with serving_direct(server) as url:
        assert httpx.get(f"{url}/ping", timeout=10).json()["pid"] == os.getpid()
    assert not server.is_running
