"""With cancellation on, the main process learns once which request to stop: the client went
away, the request timed out, or its worker died. Without it, request_q carries only requests."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import httpx

from isolated_api import CancelRequest, Server
from isolated_api.testing import MainLoop, loopback_builder, running, wait_until

from .cancellation import CancellableWork, Work, work_route


def _server(queues: tuple[Any, Any], *, cancellation: bool = True, timeout: float = 10.0) -> Server:
    b = (
        loopback_builder("cancel", timeout)
        .routes.with_route("/work", work_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .done()
    )
    if cancellation:
        b.subprocess.with_cancellation()
    return b.build()


def _relay(server: Server) -> Any:
    relay = server.ipc
    assert relay is not None and relay.is_running  # subprocess mode: the relay serves this server
    return relay


def _cancels(main_loop: MainLoop) -> list[CancelRequest]:
    return [m for m in main_loop.received if isinstance(m, CancelRequest)]


def _works(main_loop: MainLoop) -> list[Work]:
    return [m for m in main_loop.received if isinstance(m, Work)]


def _send_and_hang_up(port: int | None, text: str) -> socket.socket:
    assert port is not None, "the server is not started: it has no port to connect to"
    body = f'{{"text": "{text}"}}'.encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /work HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_cancellation_client_disconnect_tells_the_main_process_once(
    queues: tuple[Any, Any], main_loop: MainLoop, work: CancellableWork
) -> None:
    """Steps: a request is held by the main process, whose work can't be interrupted; its client
    closes the connection. Expect one CancelRequest(id, "disconnected") for that id on request_q,
    the route forgotten, and the late reply dropped."""
    work.honour_cancels = False
    server = _server(queues)
    with running(server):
        relay = _relay(server)
        sock = _send_and_hang_up(server.port, "gone")
        main_loop.wait_received(1)
        sock.close()
        wait_until(lambda: len(_cancels(main_loop)) == 1, 10, "the cancel notice")
        [request] = _works(main_loop)
        assert _cancels(main_loop) == [CancelRequest(request.id, "disconnected")]
        assert relay.pending_count == 0
        dropped = relay.dropped_count
        work.release()
        wait_until(lambda: relay.dropped_count == dropped + 1, 10, "the late reply to be dropped")
        assert len(_cancels(main_loop)) == 1


def test_cancellation_main_process_stops_the_cancelled_work(
    queues: tuple[Any, Any], main_loop: MainLoop, work: CancellableWork
) -> None:
    """Steps: a request is held by the main process; its client closes the connection; then, once
    the work is released, one more request. Expect the held work stopped by its CancelRequest
    without a reply (nothing dropped: replies leave in order, so one sent before the next answer
    would have been counted by then), and the next request answered."""
    server = _server(queues)
    with running(server) as url:
        relay = _relay(server)
        sock = _send_and_hang_up(server.port, "gone")
        main_loop.wait_received(1)
        sock.close()
        wait_until(lambda: len(work.stopped) == 1, 10, "the cancelled work to stop")
        assert work.stopped == [_works(main_loop)[0].id]
        dropped = relay.dropped_count
        work.release()
        assert httpx.post(f"{url}/work", json={"text": "next"}, timeout=10).json() == {"text": "NEXT"}
        assert relay.dropped_count == dropped
        assert relay.pending_count == 0


def test_cancellation_timeout_and_worker_death_are_reported(
    queues: tuple[Any, Any], main_loop: MainLoop, work: CancellableWork
) -> None:
    """Steps: a request held past its 0.3 s timeout; then a second held request whose HTTP worker
    is SIGKILLed. Expect a CancelRequest for the first (after its 504) and then
    CancelRequest(id, "worker_died") for the second."""
    server = _server(queues, timeout=0.3)
    with running(server) as url:
        assert httpx.post(f"{url}/work", json={"text": "slow"}, timeout=10).status_code == 504
        wait_until(lambda: len(_cancels(main_loop)) == 1, 10, "the timeout's cancel notice")
        assert _cancels(main_loop)[0].id == _works(main_loop)[0].id
        sock = _send_and_hang_up(server.port, "orphan")
        wait_until(lambda: len(_works(main_loop)) == 2, 10, "the second request")
        assert server.process is not None and server.process.pid is not None
        os.kill(server.process.pid, signal.SIGKILL)
        wait_until(lambda: len(_cancels(main_loop)) == 2, 10, "the dead worker's cancel notice")
        assert _cancels(main_loop)[1] == CancelRequest(_works(main_loop)[1].id, "worker_died")
        sock.close()
        work.release()


def test_cancellation_is_off_by_default(queues: tuple[Any, Any], main_loop: MainLoop, work: CancellableWork) -> None:
    """Without with_cancellation() a disconnect changes nothing in the main process: the request
    is answered, its reply dropped, and request_q carries no CancelRequest."""
    server = _server(queues, cancellation=False)
    with running(server):
        relay = _relay(server)
        sock = _send_and_hang_up(server.port, "gone")
        main_loop.wait_received(1)
        sock.close()
        work.release()
        wait_until(lambda: relay.pending_count == 0, 10, "the request to complete")
        assert _cancels(main_loop) == []
