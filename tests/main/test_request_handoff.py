"""Issue 28: a large request waits in the relay's process, and ``request_q`` carries a small
``HandedRequest`` that is the request where it is unpickled (main/request_handoff.py). Real
``multiprocessing`` queues, a real relay, real child processes (spawned and forked) reading the
queue, a real Unix socket between them."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
import threading
from dataclasses import dataclass
from multiprocessing.connection import Client
from typing import Any

import msgspec
import pytest

from isolated_api.main.relay import Relay
from isolated_api.main.request_handoff import HANDOFF_MIN, HandedRequest, handoff_counts, held_count, socket_address
from isolated_api.shared.codecs import MsgspecCodec
from isolated_api.shared.errors import QueueFullError
from isolated_api.shared.framing import dumps, loads
from isolated_api.testing import wait_until
from tests.main.relay_doubles import Collector

MiB = 1 << 20


class WireBlob(msgspec.Struct, tag=True):
    id: str
    data: bytes


@dataclass
class Blob:
    id: str
    data: bytes


def _report(request_q: Any, report_q: Any) -> None:
    """In a child: reads one request and reports its id, size and hash."""
    message = request_q.get(timeout=60)
    report_q.put((message.id, len(message.data), hashlib.sha256(message.data).hexdigest()))


def _handoff_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "isolated-api-handoff"]


@pytest.fixture
def blob() -> Blob:
    return Blob("big", os.urandom(4 * MiB))


def test_request_handoff_a_large_request_read_in_this_process_never_crosses_the_pipe(
    relay: Relay, queues: tuple[Any, Any], blob: Blob
) -> None:
    """Steps: forward a 4 MiB pickled request; read the queue's raw message from its pipe, then
    unpickle it as ``request_q.get()`` would. Expected: the pipe carried under 1 KiB, the message
    unpickles to the request, intact, and nothing is held afterwards."""
    request_q, _ = queues
    taken = handoff_counts()["local"]
    relay.forward(Collector(), "big", payload=dumps(blob))
    assert held_count() == 1
    raw = request_q._reader.recv_bytes()
    assert len(raw) < 1024
    request_q._sem.release()  # as Queue.get does for the message read
    assert loads(raw) == blob
    assert held_count() == 0
    assert handoff_counts()["local"] == taken + 1


def test_request_handoff_requests_keep_their_order_small_and_large_mixed(relay: Relay, queues: tuple[Any, Any]) -> None:
    """Steps: forward 20 requests, every other one over HANDOFF_MIN, then get them all.
    Expected: they arrive in the order forwarded, each intact."""
    request_q, _ = queues
    sent = [Blob(str(i), os.urandom(HANDOFF_MIN + i if i % 2 else 100)) for i in range(20)]
    for request in sent:
        relay.forward(Collector(), request.id, payload=dumps(request))
    assert [request_q.get(timeout=10) for _ in sent] == sent
    assert held_count() == 0


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_request_handoff_a_reader_in_another_process_fetches_the_request_intact(method: str, blob: Blob) -> None:
    """Steps: a child (spawned, or forked after the relay started) reads request_q; forward a
    4 MiB request. Expected: the child gets it intact (sha256), the bytes were sent from this
    process (the fetched count grew), and nothing is held here afterwards."""
    ctx: Any = multiprocessing.get_context(method)
    request_q, response_q, report_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    relay = Relay(request_q, response_q, queue_timeout=5.0)
    relay.start()
    fetched = handoff_counts()["fetched"]
    try:
        relay.forward(Collector(), "big", payload=dumps(blob))
        reader = ctx.Process(target=_report, args=(request_q, report_q), daemon=True)
        reader.start()
        assert report_q.get(timeout=60) == ("big", len(blob.data), hashlib.sha256(blob.data).hexdigest())
        reader.join(30)
        assert reader.exitcode == 0
        assert handoff_counts()["fetched"] == fetched + 1
        assert held_count() == 0
    finally:
        relay.close()
        for q in (request_q, response_q, report_q):
            q.cancel_join_thread()
            q.close()


def test_request_handoff_with_a_binary_codec_the_main_loop_gets_the_encoded_bytes(queues: tuple[Any, Any]) -> None:
    """Steps: a relay with a binary codec forwards a 1 MiB encoded request. Expected:
    ``request_q.get()`` returns those bytes, as it does for a small request with that codec."""
    request_q, response_q = queues
    codec = MsgspecCodec(WireBlob)
    relay = Relay(request_q, response_q, queue_timeout=1.0, codec=codec)
    relay.start()
    try:
        encoded = codec.encode(WireBlob("big", os.urandom(MiB)))
        relay.forward(Collector(), "big", payload=encoded)
        got = request_q.get(timeout=10)
        assert type(got) is bytes and got == encoded
    finally:
        relay.close()


def test_request_handoff_a_request_that_finds_the_queue_full_is_not_kept() -> None:
    """Steps: a bounded queue of one, full; forward a large request with a 0.05 s queue timeout.
    Expected: QueueFullError, and its bytes are not kept here (nothing would ever take them)."""
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(maxsize=1), ctx.Queue()
    relay = Relay(request_q, response_q, queue_timeout=0.05)
    relay.start()
    try:
        request_q.put("filler")
        wait_until(lambda: request_q.qsize() == 1, 10.0, "the filler to be queued")
        with pytest.raises(QueueFullError):
            relay.forward(Collector(), "big", payload=dumps(Blob("big", os.urandom(MiB))))
        assert held_count() == 0
    finally:
        relay.close()
        for q in (request_q, response_q):
            q.cancel_join_thread()
            q.close()


def test_request_handoff_its_socket_stops_once_the_relay_stopped_and_nothing_is_held(
    queues: tuple[Any, Any], blob: Blob
) -> None:
    """Steps: a relay forwards a large request and stops before it is read; then it is read.
    Expected: the socket's thread serves while the request waits (a reader elsewhere could still
    need it), and is gone once it was taken."""
    request_q, response_q = queues
    relay = Relay(request_q, response_q, queue_timeout=1.0)
    relay.start()
    relay.forward(Collector(), "big", payload=dumps(blob))
    relay.close()
    assert held_count() == 1
    assert _handoff_threads(), "the socket stopped while a request still waited for its reader"
    assert request_q.get(timeout=10) == blob
    wait_until(lambda: not _handoff_threads(), 10.0, "the handoff socket's thread to end")


def test_request_handoff_a_peer_without_the_authkey_gets_nothing_and_others_are_still_served(
    relay: Relay, queues: tuple[Any, Any], blob: Blob
) -> None:
    """Steps: a large request waits; a peer with another authkey connects to the socket; then the
    request is read. Expected: the socket is a Unix socket in a directory only this user may
    enter; the peer is refused (AuthenticationError), and the request is still there, intact."""
    request_q, _ = queues
    relay.forward(Collector(), "big", payload=dumps(blob))
    address = socket_address() or ""
    assert stat.S_ISSOCK(os.stat(address).st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(address)).st_mode) == 0o700
    with pytest.raises(multiprocessing.AuthenticationError), Client(address, family="AF_UNIX", authkey=b"not it"):
        pass
    assert held_count() == 1
    assert request_q.get(timeout=10) == blob


def test_request_handoff_a_reader_whose_server_process_is_gone_is_told_why() -> None:
    """Steps: unpickle, as a reader in another process would, a marker whose process (and so its
    socket) is gone. Expected: RuntimeError naming that process and what happened, not a hang."""
    marker = HandedRequest(1, "/nonexistent/isolated-api-test-socket", False)
    marker.pid = os.getpid() + 1_000_000  # no such process: the bytes must be fetched
    with pytest.raises(RuntimeError, match=r"could not be fetched from the server's process \(pid \d+\)"):
        loads(dumps(marker))
