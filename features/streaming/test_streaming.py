"""Streaming over real HTTP through a real child and a real main-process engine: SSE frames in
order, honest statuses before the first chunk, keep-alives, slow clients and clients that leave."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from isolated_api import Server
from isolated_api.testing import MainLoop, loopback_builder, running, wait_until

from .step_loop import StepLoop
from .streaming import (
    Generate,
    emit_tokens,
    generate_route,
    generate_route_quick_keepalive,
    generate_route_small_buffer,
    pending_route,
)


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


def build_server(queues: tuple[Any, Any], *, timeout: float = 10.0, max_pending: int = 100) -> Server:
    return (
        loopback_builder("streaming", timeout)
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


@contextmanager
def serving(
    queues: tuple[Any, Any], engine: Engine, *, timeout: float = 10.0, max_pending: int = 100
) -> Iterator[tuple[str, Server]]:
    server = build_server(queues, timeout=timeout, max_pending=max_pending)
    main = MainLoop(*queues, engine).start()
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
        assert server.ipc is not None and server.ipc.dropped_count == 0


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
                await asyncio.to_thread(wait_until, lambda: relay.pending_count == 2, 10.0, "two held streams")
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
            return relay.dropped_count + child_counters(url)["dropped"]

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
                await asyncio.to_thread(wait_until, lambda: relay.pending_count == 1, 10.0, "the request to arrive")
                request.cancel()
                await asyncio.wait((request,))

        asyncio.run(go())
        wait_until(lambda: child_counters(url)["pending"] == 0, 5.0, "the slot to be freed")
        assert not engine.finished
        engine.hold.set()
        wait_until(lambda: len(engine.finished) == 1, 10.0, "the engine to finish")
        wait_until(lambda: relay.dropped_count + child_counters(url)["dropped"] == 4, 10.0, "4 tokens dropped")


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


def test_streaming_batched_main_loop_serves_every_stream(queues: tuple[Any, Any]) -> None:
    """Steps: the main process is a ``StepLoop`` that gathers 4 streams before its first step, then
    makes one token for each per step; 4 concurrent streams of 8 tokens. Expect every stream
    complete and in order, in 8 steps (each step's 4 tokens leave as one message)."""
    server = build_server(queues)
    loop = StepLoop(*queues, batch=4).start()
    try:
        with running(server) as url:

            async def one(client: httpx.AsyncClient) -> SSE:
                async with client.stream("POST", f"{url}/generate", json={"max_tokens": 8}) as response:
                    assert response.status_code == 200
                    return await read_sse(response)

            async def go() -> list[SSE]:
                async with httpx.AsyncClient(timeout=30) as client:
                    return list(await asyncio.gather(*(one(client) for _ in range(4))))

            for sse in asyncio.run(go()):
                assert_tokens(sse.data, 8)
            # The last step's counter moves just after its tokens leave: wait for it, then check.
            wait_until(lambda: loop.steps >= 8, 10.0, "the loop to count its last step")
            assert loop.steps == 8
            assert child_counters(url)["pending"] == 0
    finally:
        loop.stop()
