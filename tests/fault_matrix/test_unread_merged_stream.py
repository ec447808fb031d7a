"""Fault matrix, issue 26 item 4: a client that stops reading a merged token stream costs only itself.

| condition                          | before                                   | after                             |
|------------------------------------|------------------------------------------|-----------------------------------|
| 20,000 tokens of 1 KiB, merge_text, | merging copied the whole text per token  | each token's text appended once;  |
| a client that never reads          | (quadratic): worker ~94% CPU, its other  | other clients served; the stream  |
|                                    | clients' requests time out at 10 s       | ends past merge_text's bound      |
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response

from isolated_api import IPC, TextMerge, merge_text, sse_response
from isolated_api.testing import running, wait_until
from tests.helpers import MainLoop, Work, answer_upper, builder, new_id, pending_route, upper_route

TOKENS = 20_000
TOKEN_TEXT = "x" * 1023 + " "


@dataclass
class Flood:
    id: str


@dataclass
class Token:
    id: str
    text: str
    is_final: bool = False


async def flood_route(request: Request, channel: IPC) -> Response:
    """POST /flood -> an SSE stream of ``TOKENS`` tokens of 1 KiB, merged for a slow reader."""
    return await sse_response(channel.submit_streaming(Flood(new_id()), merge=merge_text), request=request)


# Well under what the socket buffers leave in the stream buffer once a client stops reading
# (20 MB less a few MB), so the stream surely passes it.
SMALL_MERGE = TextMerge(max_chars=1 << 20)


async def bounded_flood_route(request: Request, channel: IPC) -> Response:
    """POST /flood-bounded -> the same, merged into chunks of at most 1 MiB of text."""
    return await sse_response(channel.submit_streaming(Flood(new_id()), merge=SMALL_MERGE), request=request)


class FloodingEngine:
    """Answers ``Work`` as usual and a ``Flood`` with every token at once, as fast as it can put them."""

    def __init__(self, response_q: Any) -> None:
        self.response_q = response_q
        self.flooded = threading.Event()

    def __call__(self, request: Any) -> Any:
        if isinstance(request, Work):
            return answer_upper(request)
        for index in range(TOKENS):
            self.response_q.put(Token(request.id, TOKEN_TEXT, is_final=index == TOKENS - 1))
        self.flooded.set()
        return None


def _read_to_the_end(sock: socket.socket) -> bytes:
    received = bytearray()
    while data := sock.recv(1 << 16):
        received += data
    return bytes(received)


@contextmanager
def unread_stream(queues: tuple[Any, Any], path: str) -> Iterator[tuple[str, socket.socket]]:
    """A one-worker server, and a client on a real socket that asked for the stream at ``path``
    and has read nothing by the time the engine has put every token."""
    engine = FloodingEngine(queues[1])
    loop = MainLoop(*queues, behaviour=engine).start()
    server = (
        builder("unread-merged-stream")
        .with_timeout(60)
        .routes.with_route("/flood", flood_route, methods=["POST"])
        .with_route("/flood-bounded", bounded_flood_route, methods=["POST"])
        .with_route("/upper", upper_route, methods=["POST"])
        .with_route("/pending", pending_route)
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    try:
        with running(server) as url, socket.socket() as sock:
            # A small receive window, so that the worker's socket fills and its stream buffer
            # must merge almost every token.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            sock.sendall(head.encode())
            wait_until(engine.flooded.is_set, 60.0, "the engine to put every token")
            yield url, sock
    finally:
        loop.stop()


def test_unread_merged_stream_leaves_the_workers_other_clients_served(queues: tuple[Any, Any]) -> None:
    """Steps: one HTTP worker; a client on a real socket with a 4 KiB receive buffer asks for a
    stream of 20,000 tokens of 1 KiB merged by merge_text, and reads nothing; once the engine has put
    every token, another client sends three requests in a row to the same worker. Expected: each is
    answered 200 within 10 s (with quadratic merging the worker spent over 30 s on the backlog first
    and they timed out); then the first client reads, and its stream is whole or ends in an error frame.
    """
    with unread_stream(queues, "/flood") as (url, sock), httpx.Client(timeout=10) as other:
        for attempt in range(3):
            answer = other.post(f"{url}/upper", json={"text": f"other {attempt}"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["text"] == f"OTHER {attempt}"
        sock.settimeout(30)
        body = _read_to_the_end(sock).decode()
    assert body.startswith("HTTP/1.1 200"), body[:200]
    # Whether the default bound (16 MiB) is passed depends on how much the socket buffers took.
    assert '"is_final":true' in body or "event: error" in body, body[-500:]


def test_unread_merged_stream_ends_past_the_merge_bound(queues: tuple[Any, Any]) -> None:
    """Steps: as above, merged by TextMerge(max_chars=1 MiB). Expected: once the client reads, it
    gets the text merged up to the bound, then an overflow error frame: neither the final token nor
    the 20 MB of text the engine wrote (what passed the bound was never kept)."""
    with unread_stream(queues, "/flood-bounded") as (url, sock):
        # Read nothing before the worker is done with every token (the stream left its registry).
        wait_until(lambda: httpx.get(f"{url}/pending", timeout=10).json()["pending"] == 0, 30.0, "the stream to end")
        sock.settimeout(30)
        received = _read_to_the_end(sock)
    body = received.decode()
    assert body.startswith("HTTP/1.1 200"), body[:200]
    assert "event: error" in body and "merged text past 1048576 characters" in body, body[-500:]
    assert '"is_final":true' not in body
    assert len(received) < TOKENS * len(TOKEN_TEXT)
