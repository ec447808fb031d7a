"""With cancellation on, the main process learns once which request to stop: the client went
away, the request timed out, or its worker died. Without it, request_q carries only requests."""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

import httpx

from isolated_api import CancelRequest
from isolated_api.testing import running, wait_until
from tests.helpers import MainLoop, Work, builder, held_until, upper_route, wait_received


def _server(queues: tuple[Any, Any], *, cancellation: bool = True, timeout: float = 10.0) -> Any:
    b = (
        builder("cancel")
        .with_timeout(timeout)
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .done()
    )
    if cancellation:
        b.subprocess.with_cancellation()
    return b.build()


def _cancels(main_loop: MainLoop) -> list[CancelRequest]:
    return [m for m in main_loop.received if isinstance(m, CancelRequest)]


def _works(main_loop: MainLoop) -> list[Work]:
    return [m for m in main_loop.received if isinstance(m, Work)]


def _send_and_hang_up(port: int, text: str) -> socket.socket:
    body = f'{{"text": "{text}"}}'.encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /upper HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_cancellation_client_disconnect_tells_the_main_process_once(
    queues: tuple[Any, Any], main_loop: MainLoop
) -> None:
    """Steps: a request is held by the main process; its client closes the connection. Expect one
    CancelRequest(id, "disconnected") for that id on request_q, the route forgotten, and the late
    reply dropped."""
    release = threading.Event()
    main_loop.behaviour = lambda m: held_until(release)(m) if isinstance(m, Work) else None
    server = _server(queues)
    with running(server):
        sock = _send_and_hang_up(server.port, "gone")
        wait_received(main_loop, 1)
        sock.close()
        wait_until(lambda: len(_cancels(main_loop)) == 1, 10, "the cancel notice")
        [work] = _works(main_loop)
        assert _cancels(main_loop) == [CancelRequest(work.id, "disconnected")]
        assert server.ipc.pending_count == 0
        dropped = server.ipc.dropped_count
        release.set()
        wait_until(lambda: server.ipc.dropped_count == dropped + 1, 10, "the late reply to be dropped")
        assert len(_cancels(main_loop)) == 1


def test_cancellation_timeout_and_worker_death_are_reported(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    release = threading.Event()
    main_loop.behaviour = lambda m: held_until(release)(m) if isinstance(m, Work) else None
    server = _server(queues, timeout=0.3)
    with running(server) as url:
        assert httpx.post(f"{url}/upper", json={"text": "slow"}, timeout=10).status_code == 504
        wait_until(lambda: len(_cancels(main_loop)) == 1, 10, "the timeout's cancel notice")
        assert _cancels(main_loop)[0].id == _works(main_loop)[0].id
        sock = _send_and_hang_up(server.port, "orphan")
        wait_until(lambda: len(_works(main_loop)) == 2, 10, "the second request")
        assert server.process is not None and server.process.pid is not None
        os.kill(server.process.pid, signal.SIGKILL)
        wait_until(lambda: len(_cancels(main_loop)) == 2, 10, "the dead worker's cancel notice")
        assert _cancels(main_loop)[1] == CancelRequest(_works(main_loop)[1].id, "worker_died")
        sock.close()
        release.set()


def test_cancellation_is_off_by_default(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Without with_cancellation() a disconnect changes nothing in the main process: the request
    is answered, its reply dropped, and request_q carries no CancelRequest."""
    release = threading.Event()
    main_loop.behaviour = held_until(release)
    server = _server(queues, cancellation=False)
    with running(server):
        sock = _send_and_hang_up(server.port, "gone")
        wait_received(main_loop, 1)
        sock.close()
        release.set()
        wait_until(lambda: server.ipc.pending_count == 0, 10, "the request to complete")
        assert _cancels(main_loop) == []
