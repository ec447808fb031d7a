"""The channel's streams in-process, through their hard interleavings: no child, a fake link the
test delivers replies through, or real thread queues with the in-process relay (whose counters are
read through the channel's private link). Moved from the streaming slice, which keeps the HTTP side."""

from __future__ import annotations

import asyncio
import functools
import queue
import random
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import pytest

from isolated_api import IPCConfig
from isolated_api.shared.errors import IPCError, IPCTimeoutError, RemoteError, StreamOverflowError
from isolated_api.shared.link import LinkSink
from isolated_api.shared.messages import ErrorReply
from isolated_api.testing import wait_until
from isolated_api.worker.channel import IPCChannel
from isolated_api.worker.chunk_stream import END, IDLE
from isolated_api.worker.text_merge import TextMerge, merge_text


@dataclass
class Token:
    id: str
    index: int
    text: str
    is_final: bool = False


class FakeLink:
    """A Link that records what the channel asks for; the test delivers replies itself."""

    def __init__(self) -> None:
        self.sink: LinkSink | None = None
        self.sent: list[Hashable] = []
        self.cancelled: list[Hashable] = []
        self.reasons: list[str] = []

    async def open(self, sink: LinkSink) -> None:
        self.sink = sink

    def send(self, request_id: Hashable, request: Any, *, streaming: bool) -> None:
        self.sent.append(request_id)

    def cancel(self, request_id: Hashable, reason: str = "cancelled") -> None:
        self.cancelled.append(request_id)
        self.reasons.append(reason)

    async def close(self) -> None:
        self.sink = None

    def deliver(self, *replies: Any) -> None:
        assert self.sink is not None
        self.sink.on_replies(list(replies))


@dataclass
class Ask:
    id: str


@dataclass
class Answer:
    id: str
    text: str


async def fake_channel(max_pending: int = 100) -> tuple[IPCChannel, FakeLink]:
    link = FakeLink()
    channel = IPCChannel(config=IPCConfig(max_pending=max_pending), link=link)
    await channel.start_polling()
    return channel, link


def tok(request_id: str, index: int, final: bool = False) -> Token:
    return Token(request_id, index, f"{index} ", is_final=final)


def test_chunk_stream_cancel_while_a_reply_is_arriving() -> None:
    """Steps: a unary request and a stream wait; in one loop step their reply / first chunk is
    delivered and their tasks are cancelled. Expect both to end cancelled, pending 0, the stream's
    route cancelled on the link, and a later chunk for either dropped and counted."""

    async def go() -> None:
        channel, link = await fake_channel()

        async def consume(stream: Any) -> list[Any]:
            return [chunk async for chunk in stream]

        unary = asyncio.ensure_future(channel.submit(Ask("u")))
        stream = asyncio.ensure_future(consume(channel.submit_streaming(Ask("s"))))
        await asyncio.sleep(0)
        assert channel.pending_count == 2
        link.deliver(Answer("u", "late"), tok("s", 0))
        unary.cancel()
        stream.cancel()
        await asyncio.wait((unary, stream))
        assert unary.cancelled() and stream.cancelled()
        assert channel.pending_count == 0
        assert link.cancelled == ["s"]  # the unary request got its reply: nothing to forget
        link.deliver(Answer("u", "dup"), tok("s", 1, final=True))
        assert channel.dropped_count == 2

    asyncio.run(go())


def test_chunk_stream_timeout_racing_replies_settles_each_request_once() -> None:
    """Steps: real queues and relay; 200 unary requests with a 20 ms timeout, a main-process
    thread answering each after 0-40 ms. Expect every request to end exactly once (reply or 504),
    pending 0, and every timed-out request's reply dropped and counted, in the relay or here."""

    async def go() -> None:
        request_q: queue.Queue[Any] = queue.Queue()
        response_q: queue.Queue[Any] = queue.Queue()
        answered = 0

        def engine() -> None:
            nonlocal answered

            rng = random.Random(7)
            while (request := request_q.get()) is not None:
                threading.Timer(rng.uniform(0, 0.04), response_q.put, (Answer(request.id, "ok"),)).start()
                answered += 1

        thread = threading.Thread(target=engine, daemon=True)
        thread.start()
        channel = IPCChannel(request_q, response_q, IPCConfig(max_pending=200), response_timeout=5.0)
        await channel.start_polling()
        outcomes: dict[str, str] = {}

        async def one(n: int) -> None:
            try:
                reply = await channel.submit(Ask(str(n)), timeout=0.02)
            except IPCTimeoutError:
                assert str(n) not in outcomes
                outcomes[str(n)] = "timeout"
            else:
                assert str(n) not in outcomes and reply.id == str(n)
                outcomes[str(n)] = "reply"

        await asyncio.gather(*(one(n) for n in range(200)))
        assert len(outcomes) == 200 and channel.pending_count == 0
        timeouts = sum(1 for o in outcomes.values() if o == "timeout")
        assert 0 < timeouts < 200, "the race was not exercised: replies all came before or all after"
        relay = channel._link._relay  # type: ignore[attr-defined]

        def accounted() -> bool:
            return bool(relay.dropped_count + channel.dropped_count == timeouts and relay.pending_count == 0)

        await asyncio.to_thread(wait_until, lambda: answered == 200, 10.0, "the engine to answer all")
        await asyncio.to_thread(wait_until, accounted, 10.0, "late replies to be dropped and counted")
        request_q.put(None)
        await channel.stop_polling()

    asyncio.run(go())


def test_chunk_stream_stream_abandoned_after_n_chunks() -> None:
    """Steps: real queues and relay; the engine sends 10 chunks of 100, then waits; the consumer
    reads 10 and breaks. Expect pending 0 at once, then all 90 later chunks dropped and counted."""

    async def go() -> None:
        request_q: queue.Queue[Any] = queue.Queue()
        response_q: queue.Queue[Any] = queue.Queue()
        release = threading.Event()
        done = threading.Event()

        def engine() -> None:
            request = request_q.get()
            for i in range(100):
                if i == 10:
                    release.wait(10)
                response_q.put(tok(request.id, i, final=i == 99))
            done.set()

        threading.Thread(target=engine, daemon=True).start()
        channel = IPCChannel(request_q, response_q)
        await channel.start_polling()
        got = []
        async for chunk in channel.submit_streaming(Ask("s")):
            got.append(chunk.index)
            if len(got) == 10:
                break
        assert got == list(range(10))
        assert channel.pending_count == 0
        release.set()
        relay = channel._link._relay  # type: ignore[attr-defined]
        await asyncio.to_thread(done.wait, 10)
        await asyncio.to_thread(
            wait_until, lambda: relay.dropped_count + channel.dropped_count == 90, 10.0, "90 chunks dropped"
        )
        await channel.stop_polling()

    asyncio.run(go())


def test_chunk_stream_idle_timeout_raises() -> None:
    """Steps: a stream with a 50 ms idle timeout gets one chunk, then nothing. Expect the chunk,
    then IPCTimeoutError, pending 0 and the route cancelled."""

    async def go() -> None:
        channel, link = await fake_channel()
        stream = channel.submit_streaming(Ask("s"), timeout=0.05)
        link.deliver(tok("s", 0))
        assert (await anext(stream)).index == 0
        async with asyncio.timeout(5):
            with pytest.raises(IPCTimeoutError):
                await anext(stream)
        assert channel.pending_count == 0 and link.cancelled == ["s"] and link.reasons == ["timeout"]

    asyncio.run(go())


def test_chunk_stream_first_chunk_timeout_and_keepalive_do_not_stretch_it() -> None:
    """Steps: ``first_chunk_timeout`` 0.1 s (idle 10 s); the consumer asks with ``idle_after``
    20 ms. Expect IDLE several times, then IPCTimeoutError: IDLE returns don't reset the clock."""

    async def go() -> None:
        channel, _ = await fake_channel()
        stream = channel.submit_streaming(Ask("s"), timeout=10.0, first_chunk_timeout=0.1)
        idles = 0
        async with asyncio.timeout(5):
            with pytest.raises(IPCTimeoutError):
                while True:
                    assert await stream.next_chunk(0.02) is IDLE
                    idles += 1
        assert idles >= 2 and channel.pending_count == 0

    asyncio.run(go())


def test_chunk_stream_merges_on_overflow() -> None:
    """Steps: buffer of 3 with merge_text; 10 chunks arrive in one batch before the consumer
    runs. Expect 3 chunks, the last carrying the text of chunks 2-9 and is_final; nothing dropped."""

    async def go() -> None:
        channel, link = await fake_channel()
        stream = channel.submit_streaming(Ask("s"), buffer_size=3, merge=merge_text)
        link.deliver(*(tok("s", i, final=i == 9) for i in range(10)))
        got = [chunk async for chunk in stream]
        assert [c.text for c in got] == ["0 ", "1 ", "".join(f"{i} " for i in range(2, 10))]
        assert got[-1].is_final and channel.dropped_count == 0 and channel.pending_count == 0

    asyncio.run(go())


def test_chunk_stream_text_merge_past_its_bound_ends_the_stream() -> None:
    """Steps: buffer of 2 with TextMerge(max_chars=6); 10 tokens of 2 characters arrive at once.
    Expect "0 ", then "1 2 3 " (the merged chunk at its bound), then StreamOverflowError; the stream
    left the registry and the link heard of it, as an unmerged stream's overflow does."""

    async def go() -> None:
        channel, link = await fake_channel()
        stream = channel.submit_streaming(Ask("s"), buffer_size=2, merge=TextMerge(max_chars=6))
        link.deliver(*(tok("s", i, final=i == 9) for i in range(10)))
        assert channel.pending_count == 0 and link.cancelled == ["s"]
        got = []
        with pytest.raises(StreamOverflowError, match="merged text past 6 characters"):
            async for chunk in stream:
                got.append((chunk.index, chunk.text))
        assert got == [(0, "0 "), (3, "1 2 3 ")]

    asyncio.run(go())


def test_chunk_stream_text_merge_folds_as_pairwise_merging_would() -> None:
    """merge_text(older, newer) is still the newer chunk with both texts; a buffer folding 1,000
    tokens (str or bytes) into one chunk gives that same chunk; a bool bound or mixed texts are refused."""
    tokens = [tok("s", i, final=i == 999) for i in range(1000)]
    pairwise = functools.reduce(merge_text, tokens)
    assert pairwise == Token("s", 999, "".join(f"{i} " for i in range(1000)), True)
    fold = merge_text.fold(tokens[0])
    assert all(fold.add(t) for t in tokens[1:])
    assert fold.result() == pairwise
    raw = [Answer("b", f"{i}".encode()) for i in range(3)]  # type: ignore[arg-type]  # bytes texts merge too
    fold = merge_text.fold(raw[0])
    assert fold.add(raw[1]) and fold.add(raw[2]) and fold.result() == Answer("b", b"012")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fold.add(Answer("b", "3"))
    with pytest.raises(ValueError):
        TextMerge(max_chars=True)


def test_chunk_stream_overflow_without_merge_ends_the_stream() -> None:
    """Steps: buffer of 3, no merge; 5 chunks arrive at once. Expect the 3 buffered chunks, then
    StreamOverflowError; the overflowing chunk and a later one dropped and counted."""

    async def go() -> None:
        channel, link = await fake_channel()
        stream = channel.submit_streaming(Ask("s"), buffer_size=3)
        link.deliver(*(tok("s", i) for i in range(4)))
        assert channel.pending_count == 0 and link.cancelled == ["s"]
        link.deliver(tok("s", 4))
        got = []
        with pytest.raises(StreamOverflowError):
            async for chunk in stream:
                got.append(chunk.index)
        assert got == [0, 1, 2] and channel.dropped_count == 2

    asyncio.run(go())


def test_chunk_stream_error_reply_on_a_full_merging_buffer() -> None:
    """Steps: buffer of 2 with merge_text, full; an ErrorReply arrives. Expect the buffered chunks,
    then RemoteError with its status (it is never merged into text)."""

    async def go() -> None:
        channel, link = await fake_channel()
        stream = channel.submit_streaming(Ask("s"), buffer_size=2, merge=merge_text)
        link.deliver(tok("s", 0), tok("s", 1), ErrorReply("s", "engine died", 502))
        assert [(await anext(stream)).index for _ in range(2)] == [0, 1]
        with pytest.raises(RemoteError) as failure:
            await anext(stream)
        assert failure.value.status_code == 502 and channel.pending_count == 0

    asyncio.run(go())


def test_chunk_stream_a_failing_merge_fails_only_its_stream() -> None:
    """Steps: stream A's merge raises; one batch carries A's overflowing chunk and B's final chunk.
    Expect A to end with StreamOverflowError and B to get its chunk."""

    def bad_merge(older: Any, newer: Any) -> Any:
        raise ValueError("no")

    async def go() -> None:
        channel, link = await fake_channel()
        a = channel.submit_streaming(Ask("a"), buffer_size=1, merge=bad_merge)
        b = channel.submit_streaming(Ask("b"))
        link.deliver(tok("a", 0), tok("a", 1), tok("b", 0, final=True))
        assert [c.index async for c in b] == [0]
        assert (await anext(a)).index == 0
        with pytest.raises(StreamOverflowError):
            await anext(a)
        assert channel.pending_count == 0

    asyncio.run(go())


def test_chunk_stream_merge_that_loses_is_final_still_ends() -> None:
    """Steps: a merge keeping the older chunk's fields (is_final=False) folds the final chunk in.
    Expect the stream to end after the merged chunk instead of waiting for the idle timeout."""

    def keep_older(older: Token, newer: Token) -> Token:
        return Token(older.id, older.index, older.text + newer.text)

    async def go() -> None:
        channel, link = await fake_channel()
        stream = channel.submit_streaming(Ask("s"), buffer_size=1, merge=keep_older, timeout=30)
        link.deliver(tok("s", 0), tok("s", 1, final=True))
        async with asyncio.timeout(5):
            got = [c async for c in stream]
        assert [c.text for c in got] == ["0 1 "]
        assert await stream.next_chunk() is END

    asyncio.run(go())


def test_chunk_stream_closed_mid_stream_raises_503_error() -> None:
    """Steps: a stream has one chunk buffered when the link is lost. Expect the chunk, then
    ChannelClosedError (503)."""

    async def go() -> None:
        channel, link = await fake_channel()
        stream = channel.submit_streaming(Ask("s"))
        link.deliver(tok("s", 0))
        channel.on_link_lost("main process gone")
        assert (await anext(stream)).index == 0
        with pytest.raises(IPCError) as failure:
            await anext(stream)
        assert failure.value.status_code == 503 and channel.pending_count == 0

    asyncio.run(go())
