"""Fault matrix, issue 16 item 3: limits on what a client sends. A real server in subprocess mode,
raw sockets where an HTTP client can't send the abuse; each row checks what the client got, that
nothing reached ``request_q``, and where it matters that the HTTP worker's memory stayed bounded.

| condition                                  | client sees                | left behind                    |
|--------------------------------------------|----------------------------|--------------------------------|
| Content-Length: 500 MB                     | 413 JSON, closed           | nothing read, request_q empty  |
| 200 MB chunked body                        | 413 JSON once past 1 MiB   | worker peak RSS + < 64 MB      |
| 1 MB header / 150 headers / 40 KB URL      | 431 / 431 / 414, closed    | request_q empty                |
| head sent slowly (slowloris) / nothing     | 408 / silent close         | connection freed after timeout |
| body stalls (Content-Length or chunked)    | 408, closed                | request_q empty                |
| body goes on after the response            | the response, then closed  | nothing read after it          |
| slowloris connections >= limit_concurrency | 503, then served           | slots freed after the timeout  |
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest

from isolated_api import Server
from isolated_api.testing import MainLoop, running, spawn_queues, wait_until
from tests.helpers import answer_upper, builder, ping_route, upper_route

# Short, so the timeouts are seen within a test; a head or body sent at once takes milliseconds.
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MiB = 1024 * 1024
JSON_POST = b"POST /upper HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def limited() -> Iterator[tuple[Server, MainLoop]]:
    """One server at the default size limits with short timeouts, and a main loop counting what
    reached ``request_q``."""
    with spawn_queues() as queues:
        loop = MainLoop(*queues, answer_upper).start()
        server = (
            builder("limits")
            .routes.with_route("/upper", upper_route, methods=["POST"])
            .with_route("/ping", ping_route)
            .done()
            .uvicorn.with_header_timeout(HEADER_TIMEOUT)
            .with_body_timeout(BODY_TIMEOUT)
            # Longer than the sockets' 10 s: a connection left open shows as a timeout, not as a
            # keep-alive close.
            .with_timeout_keep_alive(30)
            .done()
            .subprocess.with_ipc(*queues)
            .done()
            .build()
        )
        try:
            with running(server):
                yield server, loop
        finally:
            loop.stop()


def _connect(server: Server) -> socket.socket:
    assert server.port is not None
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.settimeout(10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after its answer counts as closed)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _exchange(server: Server, head: bytes, body: Iterable[bytes] = ()) -> bytes:
    """Sends ``head`` then ``body`` until the server stops taking it, and returns its answer."""
    with _connect(server) as sock:
        try:
            sock.sendall(head)
            for chunk in body:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-body: the answer is already on its way
        return _read_all(sock)


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def _refusal(answer: bytes, status: int, setting: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert _status(answer) == status, answer[:300]
    assert b"connection: close" in head.lower()
    assert httpx.Response(status, content=body).json()["detail"].endswith(f"({setting})")


def _peak_rss_kb(server: Server) -> int:
    """The HTTP worker's peak resident memory so far (VmHWM), in KiB."""
    assert server.process is not None and server.process.pid is not None
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc")


def _served(server: Server, loop: MainLoop) -> None:
    """The server still answers, and this request is the first ever to reach request_q."""
    before = len(loop.received)
    response = httpx.post(f"http://127.0.0.1:{server.port}/upper", json={"text": "ok"}, timeout=10)
    assert response.status_code == 200 and response.json()["text"] == "OK"
    assert before == 0 and len(loop.received) == 1


def _chunked(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    piece = b"%x\r\n" % size + b"x" * size + b"\r\n"
    for _ in range(total // size):
        yield piece


def test_client_limits_declared_oversized_body_is_refused_before_reading(limited: tuple[Server, MainLoop]) -> None:
    """A 500 MB Content-Length, and no body sent: 413 at once (nothing is waited for)."""
    server, loop = limited
    _refusal(_exchange(server, JSON_POST + b"Content-Length: 500000000\r\n\r\n"), 413, "max_body_size")
    assert loop.received == []


def test_client_limits_chunked_body_is_refused_past_the_limit_with_bounded_memory(
    limited: tuple[Server, MainLoop],
) -> None:
    """200 MB sent chunked (no length declared): 413 once past 1 MiB; the worker's peak RSS grows
    by less than 64 MB (it reached 2 GB for 500 MB before); nothing reached request_q."""
    server, loop = limited
    peak = _peak_rss_kb(server)
    answer = _exchange(server, JSON_POST + b"Transfer-Encoding: chunked\r\n\r\n", _chunked(200 * MiB))
    _refusal(answer, 413, "max_body_size")
    assert _peak_rss_kb(server) - peak < 64 * 1024
    assert loop.received == []


def test_client_limits_oversized_heads_are_refused(limited: tuple[Server, MainLoop]) -> None:
    """A 1 MB header, 150 headers, a 40 KB URL: 431, 431, 414, before the app sees them. A 300 MB
    header is refused with the worker's peak RSS growing by less than 64 MB."""
    server, loop = limited
    get = b"GET /ping HTTP/1.1\r\nHost: t\r\n"
    _refusal(_exchange(server, get + b"X-Big: " + b"a" * MiB + b"\r\n\r\n"), 431, "max_header_size")
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(150))
    _refusal(_exchange(server, get + many + b"\r\n"), 431, "max_headers")
    _refusal(_exchange(server, b"GET /ping?" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"), 414, "max_header_size")
    peak = _peak_rss_kb(server)
    answer = _exchange(server, get + b"X-Huge: ", (b"a" * MiB for _ in range(300)))
    _refusal(answer, 431, "max_header_size")
    assert _peak_rss_kb(server) - peak < 64 * 1024
    assert loop.received == []


def test_client_limits_slow_or_silent_heads_are_closed_after_the_header_timeout(
    limited: tuple[Server, MainLoop],
) -> None:
    """A head that never ends gets 408; a connection that sends nothing is closed without an
    answer. Both within the socket's 10 s deadline (the header timeout is 1 s)."""
    server, loop = limited
    _refusal(_exchange(server, b"GET /ping HTTP/1.1\r\nHost: t\r\nX-Slow: "), 408, "header_timeout")
    with _connect(server) as silent:
        assert _read_all(silent) == b""
    assert loop.received == []


def test_client_limits_stalled_bodies_are_answered_408(limited: tuple[Server, MainLoop]) -> None:
    """Headers, then part of the body and nothing more: 408 for a declared length and for a
    chunked body; no handler ran, nothing reached request_q."""
    server, loop = limited
    _refusal(_exchange(server, JSON_POST + b"Content-Length: 100\r\n\r\n{"), 408, "body_timeout")
    _refusal(_exchange(server, JSON_POST + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"), 408, "body_timeout")
    assert loop.received == []


def test_client_limits_body_after_the_response_is_not_read_on(limited: tuple[Server, MainLoop]) -> None:
    """A route that ignores the body answers; the body goes on (chunked, unfinished): the
    connection is closed once the rest is late (body_timeout) instead of reading the body for as
    long as it comes."""
    server, loop = limited
    with _connect(server) as sock:
        sock.sendall(b"POST /ping HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        answer = _read_all(sock)
    assert _status(answer) == 405  # /ping is GET only: answered without reading the body
    assert loop.received == []


def _one_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, read off a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))[15:])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_client_limits_keep_alive_survives_a_body_answered_before_it_arrived(limited: tuple[Server, MainLoop]) -> None:
    """Steps: on one connection, three times: a POST head to a route that answers without reading
    the body; read the answer; only then send the (small) body. Expected: each answered, on the
    same connection: the late body is read and dropped, not a reason to close (http.client and
    other clients send the body in a write of its own, so it often comes after the answer)."""
    server, _ = limited
    with _connect(server) as sock:
        for _ in range(3):
            sock.sendall(b"POST /ping HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n")
            answer = _one_response(sock)
            assert _status(answer) == 405  # /ping is GET only: answered without reading the body
            assert b"connection: close" not in answer.lower()
            sock.sendall(b"{}")


def test_client_limits_all_refusals_left_request_q_empty(limited: tuple[Server, MainLoop]) -> None:
    """Runs last in this module: after every refusal above, the first request to reach the main
    process is this normal one."""
    _served(*limited)


def test_client_limits_slowloris_frees_concurrency_slots(queues: tuple[Any, Any]) -> None:
    """limit_concurrency=4 and 4 slowloris connections (a partial head each, never finished):
    a normal client gets 503 while they hold the slots, and is served once the header timeout
    closed them (before: held forever, 503 for good)."""
    server = (
        builder("slowloris")
        .routes.with_route("/ping", ping_route)
        .done()
        .uvicorn.with_limit_concurrency(4)
        .with_header_timeout(4.0)
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    with running(server) as url:
        attackers = [_connect(server) for _ in range(4)]
        try:
            for sock in attackers:
                sock.sendall(b"GET /ping HTTP/1.1\r\nHost: t\r\n")
            assert httpx.get(f"{url}/ping", timeout=10).status_code == 503
            wait_until(lambda: httpx.get(f"{url}/ping", timeout=10).status_code == 200, 20, "a free slot")
            assert all(_status(_read_all(sock)) == 408 for sock in attackers)
        finally:
            for sock in attackers:
                sock.close()
