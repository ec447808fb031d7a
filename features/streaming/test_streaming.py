"""Streaming over real HTTP through a real child and a real main-process engine, then the channel's
hard interleavings in-process (no child: a thread answering real queues, or a fake link)."""

from __future__ import annotations

import asyncio
import json
import queue
import random
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from features.streaming.streaming import (
    Generate,
    Token,
    emit_tokens,
    generate_route,
    generate_route_quick_keepalive,
    generate_route_small_buffer,
)
from isolated_api import IPCConfig, Server
from isolated_api.shared.errors import IPCError, IPCTimeoutError, RemoteError, StreamOverflowError
from isolated_api.shared.link import LinkSink
from isolated_api.shared.messages import ErrorReply
from isolated_api.testing import running, wait_until
from isolated_api.worker.channel import IPCChannel
from isolated_api.worker.chunk_stream import END, IDLE, merge_text
from tests.helpers import MainLoop, builder, pending_route

# -- HTTP side -------------------------------------------------------------------------------


@dataclass
class SSE:
    """What a client saw: data frames (with their event name) and keep-alive comments, in order."""

    events: list[tuple[str, str]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)

    @property
    def data(self) -> list[Any]:
        return [json.loads(d) for e, d in self.events if e == "message" and d != "[DONE]"]


async def read_sse(response: httpx.Response, stop_after: int | None = None) -> SSE:
    sse = SSE()
    event, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            sse.comments.append(line)
            sse.order.append("comment")
        elif line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
        elif line == "" and data:
            sse.events.append((event, "\n".join(data)))
            sse.order.append(event)
            event, data = "message", []
            if stop_after is not None and len(sse.events) >= stop_after:
                break
    return sse


class Engine:
    """The main process: answers each ``Generate`` with ``emit_tokens`` in the request's own thread.
    ``hold`` blocks every request before its first token; ``gate(request, index)`` can block more."""

    def __init__(self, response_q: Any, gate: Callable[[Generate, int], None] | None = None) -> None:
        self.response_q = response_q
        self.hold = threading.Event()
        self.hold.set()
        self.gate = gate
        self.finished: list[str] = []
        self.silent = False

    def __call__(self, request: Any) -> None:
        assert isinstance(request, Generate)
        if self.silent:
            return None
        self.hold.wait(30)

        def before(index: int) -> None:
            if self.gate is not None:
                self.gate(request, index)

        emit_tokens(request, self.response_q.put, before=before)
        self.finished.append(request.id)
        return None


@contextmanager
def serving(
    queues: tuple[Any, Any], engine: Engine, *, timeout: float = 10.0, max_pending: int = 100
) -> Iterator[tuple[str, Server]]:
    server = (
        builder("streaming")
        .with_timeout(timeout)
        .routes.with_route("/generate", generate_route, methods=["POST"])
        .with_route("/generate-ka", generate_route_quick_keepalive, methods=["POST"])
        .with_route("/generate-small", generate_route_small_buffer, methods=["POST"])
        .with_route("/pending", pending_route)
        .done()
        .subprocess.with_ipc(*queues)
        .with_max_pending(max_pending)
        .done()
        .build()
    )
    main = MainLoop(*queues, behaviour=engine).start()
    try:
        with running(server) as url:
            yield url, server
    finally:
        engine.hold.set()
        main.stop()


def child_counters(url: str) -> dict[str, int]:
    counters: dict[str, int] = httpx.get(f"{url}/pending", timeout=10).json()
    return counters


def assert_tokens(tokens: list[Any], count: int, prompt: str = "t") -> None:
    assert [t["index"] for t in tokens] == list(range(count)), "chunks missing or out of order"
    assert [t["text"] for t in tokens] == [f"{prompt}{i} " for i in range(count)]
    assert [t["is_final"] for t in tokens] == [False] * (count - 1) + [True]


def test_streaming_sse_happy_path(queues: tuple[Any, Any]) -> None:
    """Steps: one POST /generate for 5 tokens. Expect 200 text/event-stream with no-buffering
    headers, 5 data frames in order, the last final, and nothing left pending in the child."""
    with serving(queues, Engine(queues[1])) as (url, _):

        async def go() -> tuple[httpx.Response, SSE]:
            async with (
                httpx.AsyncClient(timeout=10) as client,
                client.stream("POST", f"{url}/generate", json={"prompt": "t", "max_tokens": 5}) as response,
            ):
                return response, await read_sse(response)

        response, sse = asyncio.run(go())
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert_tokens(sse.data, 5)
        assert child_counters(url)["pending"] == 0


def test_streaming_concurrent_streams_complete_and_in_order(queues: tuple[Any, Any]) -> None:
    """Steps: 32 concurrent streams of 64 tokens each, engines interleaving their puts on one
    response_q. Expect every stream complete, in order, with only its own tokens (no reordering)."""
    streams, tokens = 32, 64
    with serving(queues, Engine(queues[1])) as (url, server):

        async def one(client: httpx.AsyncClient, n: int) -> SSE:
            body = {"prompt": f"s{n}-", "max_tokens": tokens}
            async with client.stream("POST", f"{url}/generate", json=body) as response:
                assert response.status_code == 200
                return await read_sse(response)

        async def go() -> list[SSE]:
            limits = httpx.Limits(max_connections=streams + 1)
            async with httpx.AsyncClient(timeout=30, limits=limits) as client:
                return list(await asyncio.gather(*(one(client, n) for n in range(streams))))

        results = asyncio.run(go())
        reordered = sum(
            1 for sse in results for a, b in zip(sse.data, sse.data[1:], strict=False) if b["index"] != a["index"] + 1
        )
        assert reordered == 0
        assert sum(len(sse.data) for sse in results) == streams * tokens
        for n, sse in enumerate(results):
            assert_tokens(sse.data, tokens, prompt=f"s{n}-")
        assert child_counters(url)["pending"] == 0
        assert server.ipc is not None and server.ipc.dropped_replies == 0


def test_streaming_overload_before_first_chunk_is_503(queues: tuple[Any, Any]) -> None:
    """Steps: max_pending=2, the engine holds every request; two streams wait for their first
    token; a third arrives. Expect a real 503 with Retry-After for the third (never a 200), then
    both held streams complete once the engine is released."""
    engine = Engine(queues[1])
    engine.hold.clear()
    with serving(queues, engine, max_pending=2) as (url, server):
        relay = server.ipc
        assert relay is not None and relay.is_running  # subprocess mode: the relay serves this server

        async def stream(client: httpx.AsyncClient) -> tuple[int, SSE]:
            async with client.stream("POST", f"{url}/generate", json={"prompt": "t", "max_tokens": 4}) as r:
                return r.status_code, await read_sse(r)

        async def go() -> tuple[list[tuple[int, SSE]], httpx.Response]:
            async with httpx.AsyncClient(timeout=20) as client:
                held = [asyncio.ensure_future(stream(client)) for _ in range(2)]
                await asyncio.to_thread(wait_until, lambda: relay.route_count == 2, 10.0, "two held streams")
                refused = await client.post(f"{url}/generate", json={"prompt": "t", "max_tokens": 4})
                engine.hold.set()
                return list(await asyncio.gather(*held)), refused

        held, refused = asyncio.run(go())
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "busy" in refused.json()["detail"]
        for status, sse in held:
            assert status == 200
            assert_tokens(sse.data, 4)
        counters = child_counters(url)
        assert counters["pending"] == 0 and counters["rejected"] == 1


def test_streaming_timeout_before_first_chunk_is_504(queues: tuple[Any, Any]) -> None:
    """Steps: response timeout 0.5 s, the engine never answers. Expect 504 (not a 200 with an
    error event) and the slot freed."""
    engine = Engine(queues[1])
    engine.silent = True
    with serving(queues, engine, timeout=0.5) as (url, _):
        response = httpx.post(f"{url}/generate", json={"prompt": "t"}, timeout=10)
        assert response.status_code == 504
        assert "no chunk" in response.json()["detail"]
        assert child_counters(url)["pending"] == 0


def test_streaming_error_reply_as_first_chunk_gives_its_status(queues: tuple[Any, Any]) -> None:
    """Steps: the engine answers with ErrorReply(status 429) instead of the first token.
    Expect HTTP 429 with its message."""
    with serving(queues, Engine(queues[1])) as (url, _):
        response = httpx.post(f"{url}/generate", json={"fail_at": 0, "fail_status": 429}, timeout=10)
        assert response.status_code == 429
        assert response.json() == {"detail": "the engine failed at token 0"}
        assert child_counters(url)["pending"] == 0


def test_streaming_error_after_first_chunk_is_an_error_event(queues: tuple[Any, Any]) -> None:
    """Steps: the engine sends 3 tokens then an ErrorReply. Expect 200, the 3 data frames, then
    one ``event: error`` frame with the status and message, and the stream closed."""
    with serving(queues, Engine(queues[1])) as (url, _):
        with httpx.stream("POST", f"{url}/generate", json={"prompt": "t", "fail_at": 3}, timeout=10) as response:
            assert response.status_code == 200
            lines = list(response.iter_lines())
        text = "\n".join(lines)
        assert text.count("data: ") == 4
        assert text.endswith('event: error\ndata: {"detail": "the engine failed at token 3", "status": 500}\n')
        assert child_counters(url)["pending"] == 0


def test_streaming_client_disconnect_frees_the_slot_and_drops_later_chunks(queues: tuple[Any, Any]) -> None:
    """Steps: streams A and B of 40 tokens; the engine sends 5 of each, then waits. The client
    reads 5 frames of each and closes A. Expect the child's pending to fall to 1 (B) at once; once
    released, A's 35 later tokens are all dropped and counted (relay + child), B completes in order,
    pending ends at 0."""
    release = threading.Event()

    def gate(request: Generate, index: int) -> None:
        if index == 5:
            release.wait(30)

    engine = Engine(queues[1], gate)
    with serving(queues, engine) as (url, server):
        relay = server.ipc
        assert relay is not None and relay.is_running  # subprocess mode: the relay serves this server

        async def go() -> SSE:
            limits = httpx.Limits(max_connections=4)
            async with httpx.AsyncClient(timeout=20, limits=limits) as client:
                body_a = {"prompt": "a", "max_tokens": 40}
                body_b = {"prompt": "b", "max_tokens": 40}
                async with client.stream("POST", f"{url}/generate", json=body_b) as b:
                    async with client.stream("POST", f"{url}/generate", json=body_a) as a:
                        first_a = await read_sse(a, stop_after=5)
                        assert len(first_a.data) == 5
                    # A is closed: its connection is gone mid-stream.
                    await asyncio.to_thread(
                        wait_until, lambda: child_counters(url)["pending"] == 1, 10.0, "A's slot to be freed"
                    )
                    release.set()
                    return await read_sse(b)

        sse_b = asyncio.run(go())
        assert_tokens(sse_b.data, 40, prompt="b")
        wait_until(lambda: len(engine.finished) == 2, 10.0, "the engine to finish both")

        def dropped() -> int:
            return relay.dropped_replies + child_counters(url)["dropped"]

        wait_until(lambda: dropped() >= 35, 10.0, "A's later chunks to be dropped")
        assert dropped() == 35
        assert child_counters(url)["pending"] == 0


def test_streaming_client_gone_before_first_chunk_frees_the_slot(queues: tuple[Any, Any]) -> None:
    """Steps: the engine holds the request; the client gives up before any token (its request is
    cancelled, the connection closed). Expect the child's pending back to 0 while the engine still
    holds it (not after the 10 s timeout), and the 4 tokens sent later all dropped and counted."""
    engine = Engine(queues[1])
    engine.hold.clear()
    with serving(queues, engine) as (url, server):
        relay = server.ipc
        assert relay is not None and relay.is_running  # subprocess mode: the relay serves this server

        async def go() -> None:
            async with httpx.AsyncClient(timeout=20) as client:
                request = asyncio.ensure_future(client.post(f"{url}/generate", json={"max_tokens": 4}))
                await asyncio.to_thread(wait_until, lambda: relay.route_count == 1, 10.0, "the request to arrive")
                request.cancel()
                await asyncio.wait((request,))

        asyncio.run(go())
        wait_until(lambda: child_counters(url)["pending"] == 0, 5.0, "the slot to be freed")
        assert not engine.finished
        engine.hold.set()
        wait_until(lambda: len(engine.finished) == 1, 10.0, "the engine to finish")
        wait_until(lambda: relay.dropped_replies + child_counters(url)["dropped"] == 4, 10.0, "4 tokens dropped")


def test_streaming_keepalive_comment_while_engine_is_silent(queues: tuple[Any, Any]) -> None:
    """Steps: keep-alive every 0.1 s; the engine sends a token, thinks for 0.6 s, sends two more.
    Expect ``: ping`` comments between the first and second frames, and all frames."""
    with serving(queues, Engine(queues[1])) as (url, _):
        body = {"prompt": "t", "max_tokens": 3, "pause_after": 0, "pause": 0.6}
        with httpx.stream("POST", f"{url}/generate-ka", json=body, timeout=10) as response:
            assert response.status_code == 200
            lines = list(response.iter_lines())
        kinds = [("ping" if line.startswith(":") else "data") for line in lines if line]
        first_data = kinds.index("data")
        assert kinds[first_data + 1] == "ping", kinds
        assert kinds.count("ping") >= 2
        assert kinds.count("data") == 3


def test_streaming_slow_client_gets_merged_text_in_bounded_memory(queues: tuple[Any, Any]) -> None:
    """Steps: buffer of 8 chunks, merge_text; the engine writes 4,000 tokens of ~2 KB (8 MB) while
    the client reads nothing; then the client reads everything. Expect the whole text, in order,
    in fewer frames than tokens (chunks were merged, not buffered without bound), then [DONE]."""
    prompt, tokens = "x" * 2000, 4000
    engine = Engine(queues[1])
    with serving(queues, engine) as (url, _):
        body = {"prompt": prompt, "max_tokens": tokens}
        with httpx.stream("POST", f"{url}/generate-small", json=body, timeout=30) as response:
            assert response.status_code == 200
            wait_until(lambda: len(engine.finished) == 1, 30.0, "the engine to write every token")
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
        assert "".join(c["text"] for c in chunks) == "".join(f"{prompt}{i} " for i in range(tokens))
        assert chunks[-1]["is_final"] and chunks[-1]["index"] == tokens - 1
        assert len(chunks) < tokens
        assert child_counters(url)["pending"] == 0


# -- the channel in-process: hard interleavings ----------------------------------------------------


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


def test_streaming_channel_cancel_while_a_reply_is_arriving() -> None:
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


def test_streaming_channel_timeout_racing_replies_settles_each_request_once() -> None:
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
            return bool(relay.dropped_replies + channel.dropped_count == timeouts and relay.route_count == 0)

        await asyncio.to_thread(wait_until, lambda: answered == 200, 10.0, "the engine to answer all")
        await asyncio.to_thread(wait_until, accounted, 10.0, "late replies to be dropped and counted")
        request_q.put(None)
        await channel.stop_polling()

    asyncio.run(go())


def test_streaming_channel_stream_abandoned_after_n_chunks() -> None:
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
            wait_until, lambda: relay.dropped_replies + channel.dropped_count == 90, 10.0, "90 chunks dropped"
        )
        await channel.stop_polling()

    asyncio.run(go())


def test_streaming_channel_idle_timeout_raises() -> None:
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


def test_streaming_channel_first_chunk_timeout_and_keepalive_do_not_stretch_it() -> None:
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


def test_streaming_channel_merges_on_overflow() -> None:
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


def test_streaming_channel_overflow_without_merge_ends_the_stream() -> None:
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


def test_streaming_channel_error_reply_on_a_full_merging_buffer() -> None:
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


def test_streaming_channel_a_failing_merge_fails_only_its_stream() -> None:
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


def test_streaming_channel_merge_that_loses_is_final_still_ends() -> None:
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


def test_streaming_channel_closed_mid_stream_raises_503_error() -> None:
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
