"""EngineLink against an engine played by hand (a raw ROUTER on 127.0.0.1), for what a real engine
can't be made to do on cue: answer after it was given up on, or answer for the wrong request."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

import msgspec
import pytest
import zmq

from isolated_api import ChannelClosedError, IPCError, MessageTooLargeError, MsgspecCodec
from isolated_api.shared import remote_wire
from isolated_api.shared.engines import EnginesConfig
from isolated_api.worker.engine_link import EngineLink
from tests.helpers import eventually


class Ask(msgspec.Struct, tag=True):
    id: str
    text: str


class Answer(msgspec.Struct, tag=True):
    id: str
    text: str


CODEC = MsgspecCodec(Ask, Answer)
BOOT = b"\1" * remote_wire.BOOT_ID_SIZE


class Sink:
    """Records what the link hands the channel."""

    def __init__(self) -> None:
        self.replies: list[Any] = []
        self.failures: dict[Hashable, IPCError] = {}

    def on_replies(self, replies: list[Any]) -> None:
        self.replies.extend(replies)

    def on_failure(self, request_id: Hashable, error: IPCError) -> None:
        self.failures[request_id] = error

    def on_link_lost(self, reason: str) -> None:
        raise AssertionError(f"the link reported itself lost: {reason}")

    @property
    def pending_count(self) -> int:
        return 0


class HandEngine:
    """The engine's side: a ROUTER the test drives message by message."""

    def __init__(self) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.parts = 0  # how many parts the last request came in
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"

    async def recv(self, timeout: float = 10.0) -> list[bytes]:
        await eventually(lambda: bool(self.router.poll(0)), "a message from the link", timeout)
        frames: list[bytes] = self.router.recv_multipart()
        return frames

    async def next_request(self) -> tuple[bytes, Any]:
        """Answers pings on the way (as a live engine does) until a request comes."""
        while True:
            identity, kind, *rest = await self.recv()
            if kind == remote_wire.PING:
                seq, _ = remote_wire.decode_ping(rest[0])
                self.pong(identity, seq)
            elif kind[:1] == remote_wire.REQUEST:
                _, _, _, _, payload = remote_wire.decode_request(kind)
                self.parts = 1 + len(rest)
                return identity, CODEC.decode(rest[0] if rest else payload)

    def pong(self, identity: bytes, seq: int) -> None:
        pong = remote_wire.Pong(seq, BOOT.hex(), 0, 0, 0.0, 0.0, 0.0)
        self.router.send_multipart([identity, remote_wire.PONG, remote_wire.encode_pong(pong)])

    def reply(self, identity: bytes, answer: Answer) -> None:
        self.router.send_multipart([identity, remote_wire.REPLY, CODEC.encode(answer)])

    def close(self) -> None:
        self.router.close(0)
        self.context.term()


async def _ready_link(engine: HandEngine, sink: Sink) -> EngineLink:
    config = EnginesConfig((engine.address,), ping_interval=0.1, ping_timeout=0.5)
    link = EngineLink(config, CODEC)
    await link.open(sink)
    # The first ping arrives as the connection completes; answer it and the engine is ready.
    identity, kind, body = await engine.recv()
    assert kind == remote_wire.PING
    engine.pong(identity, remote_wire.decode_ping(body)[0])
    await eventually(lambda: link.pool.choose() is not None, "the engine ready")
    return link


def test_engine_link_drops_and_counts_a_reply_after_its_engine_was_lost() -> None:
    async def scenario() -> None:
        engine, sink = HandEngine(), Sink()
        link = await _ready_link(engine, sink)
        link.send("r1", Ask("r1", "hi"), streaming=False)
        identity, request = await engine.next_request()
        assert request == Ask("r1", "hi")
        # The engine goes quiet (no pongs) past ping_timeout: lost, and r1 ends at once.
        await eventually(lambda: "r1" in sink.failures, "r1 ended")
        assert isinstance(sink.failures["r1"], ChannelClosedError)
        # Then the old answer comes.
        engine.reply(identity, Answer("r1", "late"))
        await eventually(lambda: link.late_replies == 1, "the late reply counted")
        assert sink.replies == [] and link.pool.engines[0].late_replies == 1
        await link.close()
        engine.close()

    asyncio.run(scenario())


def test_engine_link_never_hands_on_a_reply_for_a_request_the_engine_does_not_hold() -> None:
    async def scenario() -> None:
        engine, sink = HandEngine(), Sink()
        link = await _ready_link(engine, sink)
        link.send("mine", Ask("mine", "x"), streaming=False)
        identity, _ = await engine.next_request()
        # A reply for an id this engine was never sent: dropped and counted, not delivered.
        engine.reply(identity, Answer("someone-else", "forged"))
        engine.reply(identity, Answer("mine", "X"))
        await eventually(lambda: bool(sink.replies), "the reply handed on")
        assert sink.replies == [Answer("mine", "X")] and link.late_replies == 1
        await link.close()
        engine.close()

    asyncio.run(scenario())


def test_engine_link_refuses_a_request_over_the_engines_cap_with_413_and_keeps_the_connection() -> None:
    """Issue 28: an engine host drops the connection of a peer whose message passes
    ``MAX_MESSAGE``, and with it every request of that worker on the engine. Steps: a request whose
    message would pass the cap, then a small one. Expect: the first refused with 413
    (``MessageTooLargeError``) before anything is sent; the second reaches the engine and is
    answered."""

    async def scenario() -> None:
        engine, sink = HandEngine(), Sink()
        link = await _ready_link(engine, sink)
        with pytest.raises(MessageTooLargeError) as refused:
            link.send("big", Ask("big", "x" * remote_wire.MAX_MESSAGE), streaming=False)
        assert refused.value.status_code == 413 and "engine accepts" in refused.value.message
        link.send("small", Ask("small", "hi"), streaming=False)
        identity, request = await engine.next_request()
        assert request == Ask("small", "hi")
        engine.reply(identity, Answer("small", "HI"))
        await eventually(lambda: bool(sink.replies), "the reply handed on")
        assert sink.replies == [Answer("small", "HI")] and sink.failures == {}
        await link.close()
        engine.close()

    asyncio.run(scenario())


def test_engine_link_sends_a_large_payload_as_a_part_of_its_own() -> None:
    """Issue 28: a request of 64 KiB or more leaves as [head, payload], the payload handed to
    ZeroMQ without being joined into the head; a small one as one part. Both arrive intact."""

    async def scenario() -> None:
        engine, sink = HandEngine(), Sink()
        link = await _ready_link(engine, sink)
        text = "y" * (2 << 20)
        link.send("big", Ask("big", text), streaming=False)
        _, request = await engine.next_request()
        assert request == Ask("big", text) and engine.parts == 2
        link.send("small", Ask("small", "hi"), streaming=False)
        _, request = await engine.next_request()
        assert request == Ask("small", "hi") and engine.parts == 1
        await link.close()
        engine.close()

    asyncio.run(scenario())
