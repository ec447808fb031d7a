"""Unary requests over real HTTP through a real child and a real main-process loop."""

from __future__ import annotations

import os
from typing import Any

import httpx

from tests.helpers import MainLoop, builder, ping_route, running, upper_route


def _server(queues: tuple[Any, Any], **timeouts: float) -> Any:
    b = builder("unary")
    if "timeout" in timeouts:
        b.with_timeout(timeouts["timeout"])
    return (
        b.routes.with_route("/upper", upper_route, methods=["POST"])
        .with_route("/ping", ping_route)
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )


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
