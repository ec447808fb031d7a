"""EngineHost as an API worker sees it, through a raw ZeroMQ DEALER on 127.0.0.1: the framework's
messages, admission, stale boots, peers that go silent, and what a hostile peer cannot do."""

from __future__ import annotations

import logging
import queue
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq

from isolated_api import CancelRequest, EngineHost, MsgspecCodec
from isolated_api.shared import control, remote_wire
from isolated_api.testing import wait_until


class Ask(msgspec.Struct, tag=True):
    id: str
    text: str


class Answer(msgspec.Struct, tag=True):
    id: str
    text: str


CODEC = MsgspecCodec(Ask, Answer)


class Peer:
    """An API worker's side of one engine link, by hand."""

    def __init__(self, context: zmq.Context[Any], address: str) -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def recv(self, timeout: float = 10.0) -> list[bytes]:
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"nothing from the engine host within {timeout} s")
        frames: list[bytes] = self.sock.recv_multipart()
        return frames

    def ping(self, seq: int = 1, interval: float = 0.5) -> remote_wire.Pong:
        self.send(remote_wire.PING, remote_wire.encode_ping(seq, interval))
        kind, body = self.recv()
        assert kind == remote_wire.PONG
        return remote_wire.decode_pong(body)

    def request(self, boot: bytes, request_id: str, text: str) -> None:
        payload = CODEC.encode(Ask(request_id, text))
        self.send(remote_wire.encode_request(False, boot, CODEC.encode_id(request_id), b"POST /ask", payload))


@pytest.fixture
def host() -> Iterator[tuple[EngineHost, queue.Queue[Any], queue.Queue[Any]]]:
    request_q: queue.Queue[Any] = queue.Queue()
    response_q: queue.Queue[Any] = queue.Queue()
    engine = EngineHost(
        request_q, response_q, bind="tcp://127.0.0.1:0", codec=CODEC, max_pending=2, cancel_notices=True
    )
    engine.start()
    try:
        yield engine, request_q, response_q
    finally:
        engine.stop()


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.term()


def _next_request(request_q: queue.Queue[Any]) -> Any:
    return CODEC.decode(request_q.get(timeout=10))


def test_engine_host_answers_a_ping_with_its_boot_and_load(host: Any, context: zmq.Context[Any]) -> None:
    engine, _, _ = host
    peer = Peer(context, engine.address)
    pong = peer.ping(seq=7)
    assert pong.seq == 7 and bytes.fromhex(pong.boot) == engine.boot_id
    assert (pong.pending, pong.capacity) == (0, 2)
    peer.sock.close(0)


def test_engine_host_carries_a_request_and_its_reply(host: Any, context: zmq.Context[Any]) -> None:
    engine, request_q, response_q = host
    peer = Peer(context, engine.address)
    peer.request(engine.boot_id, "r1", "hi")
    assert _next_request(request_q) == Ask("r1", "hi")
    response_q.put(Answer("r1", "HI"))
    kind, payload = peer.recv()
    assert kind == remote_wire.REPLY and CODEC.decode(payload) == Answer("r1", "HI")
    peer.sock.close(0)


def test_engine_host_takes_a_large_payload_as_a_part_of_its_own(host: Any, context: zmq.Context[Any]) -> None:
    """A 4 MiB request in two parts (head, payload: what an API worker sends from 64 KiB on) is
    carried intact; a request with a payload in both parts is dropped and counted."""
    engine, request_q, response_q = host
    peer = Peer(context, engine.address)
    text = "x" * (4 << 20)
    payload = CODEC.encode(Ask("big", text))
    parts = remote_wire.encode_request_parts(False, engine.boot_id, CODEC.encode_id("big"), b"POST /ask", payload)
    assert len(parts) == 2 and parts[1] is payload
    peer.send(*parts)
    assert _next_request(request_q) == Ask("big", text)
    response_q.put(Answer("big", "ok"))
    kind, body = peer.recv()
    assert kind == remote_wire.REPLY and CODEC.decode(body) == Answer("big", "ok")
    bad = engine.bad_messages
    head = remote_wire.encode_request(False, engine.boot_id, CODEC.encode_id("two"), b"", b"\x81")
    peer.send(head, payload)
    wait_until(lambda: engine.bad_messages == bad + 1, 10, "the two-payload request to be dropped")
    peer.sock.close(0)


def test_engine_host_a_reply_it_cannot_encode_is_a_500_with_an_error_id(
    host: Any, context: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Steps: a request, answered with a reply MessagePack can't carry (a lambda). Expected: a
    REJECT 500 whose message is only an error id; the codec's error logged here under that id."""
    caplog.set_level(logging.ERROR, logger="isolated_api.engine_host")
    engine, request_q, response_q = host
    peer = Peer(context, engine.address)
    try:
        peer.request(engine.boot_id, "r1", "hi")
        assert _next_request(request_q) == Ask("r1", "hi")
        response_q.put(Answer("r1", lambda: None))  # type: ignore[arg-type]  # what MessagePack can't encode
        kind, id_bytes, body = peer.recv()
        reject = remote_wire.decode_reject(body)
        assert kind == remote_wire.REJECT and CODEC.decode_id(id_bytes) == "r1" and reject.status == 500
        found = re.fullmatch(r"internal error \(error id ([0-9a-f]+)\)", reject.message)
        assert found is not None, reject.message
        logged = [r.getMessage() for r in caplog.records if found.group(1) in r.getMessage()]
        assert any("MessagePack" in message for message in logged), caplog.text
    finally:
        peer.sock.close(0)  # before the context's term(), even when an assertion failed


def test_engine_host_refuses_a_request_for_an_earlier_boot_unrun(host: Any, context: zmq.Context[Any]) -> None:
    engine, request_q, _ = host
    peer = Peer(context, engine.address)
    peer.request(b"\0" * remote_wire.BOOT_ID_SIZE, "old", "from before a restart")
    kind, id_bytes, body = peer.recv()
    assert kind == remote_wire.REJECT and CODEC.decode_id(id_bytes) == "old"
    assert remote_wire.decode_reject(body).why == "stale"
    assert request_q.empty() and engine.stale_rejected == 1
    peer.sock.close(0)


def test_engine_host_admits_exactly_max_pending(host: Any, context: zmq.Context[Any]) -> None:
    engine, request_q, response_q = host
    peer = Peer(context, engine.address)
    for n in range(3):
        peer.request(engine.boot_id, f"r{n}", "x")
    kind, id_bytes, body = peer.recv()
    reject = remote_wire.decode_reject(body)
    assert kind == remote_wire.REJECT and CODEC.decode_id(id_bytes) == "r2"
    assert (reject.why, reject.status, reject.retryable) == ("full", 503, True) and reject.retry_after >= 1
    assert [_next_request(request_q).id for _ in range(2)] == ["r0", "r1"]
    assert request_q.empty()
    # A reply frees a place: the next request is admitted.
    response_q.put(Answer("r0", "done"))
    assert peer.recv()[0] == remote_wire.REPLY
    peer.request(engine.boot_id, "r3", "x")
    assert _next_request(request_q).id == "r3"
    peer.sock.close(0)


@pytest.mark.parametrize(
    "frames",
    [
        [b"Z", b"unknown kind"],
        [remote_wire.REQUEST, b"a part too many"],
        [remote_wire.REQUEST + b"shorter than its header"],
        [remote_wire.encode_request(False, b"b" * 16, b'"x"', b"", b"")[:-1]],
        [remote_wire.PING, b"{not json"],
        [remote_wire.PING, b'{"seq": "1", "interval": 0.5}'],
        [remote_wire.CANCEL, b"\x80\x04pickle"],
    ],
)
def test_engine_host_drops_and_counts_malformed_messages(
    host: Any, context: zmq.Context[Any], frames: list[bytes]
) -> None:
    engine, request_q, _ = host
    peer = Peer(context, engine.address)
    peer.send(*frames)
    # Still serving this very peer, and nothing reached the main loop.
    assert peer.ping().seq == 1
    assert engine.bad_messages == 1 and request_q.empty()
    peer.sock.close(0)


def test_engine_host_cancels_the_work_of_a_peer_that_went_silent(host: Any, context: zmq.Context[Any]) -> None:
    engine, request_q, _ = host
    peer = Peer(context, engine.address)
    # Pings every 0.05 s: silent for 3 of them and a second counts as gone.
    peer.ping(interval=0.05)
    peer.request(engine.boot_id, "orphan", "x")
    assert _next_request(request_q).id == "orphan"
    peer.sock.close(0)
    notice = _next_request(request_q)
    assert isinstance(notice, CancelRequest) and (notice.id, notice.reason) == ("orphan", "worker_died")
    assert engine.peer_count == 0


def test_engine_host_forgets_a_peer_that_says_bye(host: Any, context: zmq.Context[Any]) -> None:
    engine, request_q, _ = host
    peer = Peer(context, engine.address)
    peer.request(engine.boot_id, "left", "x")
    assert _next_request(request_q).id == "left"
    cancel = control.encode_cancel("left", "client_disconnected", CODEC.encode_id)
    peer.send(remote_wire.CANCEL, cancel)
    notice = _next_request(request_q)
    assert (notice.id, notice.reason) == ("left", "client_disconnected")
    assert engine.peer_count == 1
    peer.send(remote_wire.BYE)
    wait_until(lambda: engine.peer_count == 0, 10, "the peer forgotten")
    peer.sock.close(0)


def test_engine_host_stop_is_idempotent_and_frees_the_port(context: zmq.Context[Any]) -> None:
    engine = EngineHost(queue.Queue(), queue.Queue(), bind="tcp://127.0.0.1:0", codec=CODEC)
    engine.start()
    address = engine.address
    # Bound by start(): the real port, not the 0 that was asked for.
    assert address is not None and address.startswith("tcp://127.0.0.1:") and not address.endswith(":0")
    engine.stop()
    engine.stop()
    again = EngineHost(queue.Queue(), queue.Queue(), bind=address, codec=CODEC)
    again.start()
    assert again.address == address and again.boot_id != engine.boot_id
    again.stop()
