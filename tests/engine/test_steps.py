"""``engine.steps``: continuous batching of streams. Over real HTTP (SSE) where the client's view
matters, over the real queues where the engine's (what leaves on ``response_q``, and when)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Hashable
from typing import Any

import httpx
import pytest

from isolated_api import CancelRequest, Done, Engine, EngineError, ErrorReply, StreamChunk
from isolated_api.testing import running, wait_until
from tests.engine.helpers import Replies, server
from tests.engine.step_jobs import Generate, TokenStepper, generate_route

Queues = tuple[Any, Any]
ROUTES = [("/generate", generate_route)]


def _engine(queues: Queues, stepper: Any, max_active: int = 32) -> Engine:
    engine = Engine(*queues)
    engine.steps(Generate, stepper, max_active=max_active)
    return engine


async def _sse(client: httpx.AsyncClient, body: dict[str, Any], events: list[dict[str, Any]]) -> None:
    async with client.stream("POST", "/generate", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))


def _streams(url: str, bodies: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    async def main() -> list[list[dict[str, Any]]]:
        limits = httpx.Limits(max_connections=len(bodies) + 1)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            results: list[list[dict[str, Any]]] = [[] for _ in bodies]
            await asyncio.gather(*(_sse(client, b, r) for b, r in zip(bodies, results, strict=True)))
            return results

    return asyncio.run(main())


def _stream_in_thread(url: str, body: dict[str, Any], events: list[dict[str, Any]]) -> threading.Thread:
    async def main() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await _sse(client, body, events)

    thread = threading.Thread(target=lambda: asyncio.run(main()))
    thread.start()
    return thread


def _read_stream(replies: Replies) -> list[Any]:
    chunks = [replies.next()]
    while type(chunks[-1]) is StreamChunk and not chunks[-1].is_final:
        chunks.append(replies.next())
    return chunks


def _read_streams(replies: Replies, count: int) -> dict[Hashable, list[Any]]:
    """Every message until ``count`` streams ended, grouped by stream id, in arrival order."""
    by_id: dict[Hashable, list[Any]] = {}
    ended = 0
    while ended < count:
        reply = replies.next()
        by_id.setdefault(reply.id, []).append(reply)
        if type(reply) is ErrorReply or reply.is_final:
            ended += 1
    return by_id


def test_steps_streams_of_3_to_50_tokens_each_get_exactly_their_tokens_and_one_final(queues: Queues) -> None:
    """Steps: 7 SSE clients at once, streams of 3, 5, 8, 13, 21, 34 and 50 tokens. Expect each
    client exactly its own tokens in order, then one final chunk; leave(why="done") once each."""
    lengths = [3, 5, 8, 13, 21, 34, 50]
    stepper = TokenStepper()
    with _engine(queues, stepper), running(server(queues, ROUTES)) as url:
        results = _streams(url, [{"tokens": n, "tag": f"s{n}"} for n in lengths])
        for n, events in zip(lengths, results, strict=True):
            assert events == [{"data": f"s{n}:{k}", "final": False} for k in range(n)] + [{"data": None, "final": True}]
        wait_until(lambda: len(stepper.left) == len(lengths), 10, "every stream to leave")
        assert sorted(stepper.left) == sorted((f"s{n}", "done") for n in lengths)


def test_steps_a_short_stream_closes_before_the_longest_ends(queues: Queues) -> None:
    """Steps: a 50-token stream starts (its first step held); a 3-token one arrives and the step
    goes on; the long one is then held at 40 tokens. Expect the short stream's SSE to close, all
    3 tokens and its final chunk in, while the long one is still held; then the long one's 50."""
    stepper = TokenStepper(hold_at=40)
    stepper.start.clear()
    stepper.gate.clear()
    with _engine(queues, stepper) as engine, running(server(queues, ROUTES)) as url:
        long_events: list[dict[str, Any]] = []
        long_client = _stream_in_thread(url, {"tokens": 50, "tag": "long"}, long_events)
        wait_until(lambda: len(stepper.steps) == 1, 10, "the long stream's first step")
        short_events: list[dict[str, Any]] = []
        short_client = _stream_in_thread(url, {"tokens": 3, "tag": "short"}, short_events)
        wait_until(lambda: engine.running_count == 2, 10, "the short stream to reach the engine")
        stepper.start.set()
        short_client.join(30)
        assert not short_client.is_alive() and [e["data"] for e in short_events] == [
            "short:0",
            "short:1",
            "short:2",
            None,
        ]
        # The long one's steps run on beside the short one's close: wait for its hold, not a race.
        wait_until(lambda: stepper.emitted["long"] == 40, 10, "the long stream held at 40 tokens")
        assert long_client.is_alive()  # held: not ended
        stepper.gate.set()
        long_client.join(30)
        assert [e["data"] for e in long_events] == [f"long:{k}" for k in range(50)] + [None]


def test_steps_a_request_arriving_mid_run_joins_within_one_step(queues: Queues) -> None:
    """Steps: a 20-token stream held at its 5th token; a newcomer arrives meanwhile. Expect the
    newcomer in the very next step after the held one."""
    request_q, response_q = queues
    stepper = TokenStepper(hold_at=5)
    stepper.gate.clear()
    replies = Replies(response_q)
    with _engine(queues, stepper) as engine:
        request_q.put(Generate("first", 20, "first"))
        wait_until(lambda: stepper.emitted.get("first") == 5 and len(stepper.steps) == 6, 10, "the held step")
        request_q.put(Generate("late", 3, "late"))
        wait_until(lambda: engine.running_count == 2, 10, "the newcomer to reach the engine")
        held = len(stepper.steps)
        stepper.gate.set()
        streams = _read_streams(replies, 2)
        assert [c.data for c in streams["late"]] == ["late:0", "late:1", "late:2", None]
        assert stepper.steps[held] == ["first", "late"]  # the step right after the held one
        assert stepper.joined == ["first", "late"]


def test_steps_never_more_than_max_active_in_a_step(queues: Queues) -> None:
    """Steps: max_active=3, 8 streams of 4 tokens put at once. Expect every step() to get at most
    3 streams (and some exactly 3), and every stream all its tokens."""
    request_q, response_q = queues
    stepper = TokenStepper()
    with _engine(queues, stepper, max_active=3):
        for i in range(8):
            request_q.put(Generate(i, 4, f"s{i}"))
        streams = _read_streams(Replies(response_q), 8)
    assert max(stepper.sizes) == 3
    for i in range(8):
        assert [c.data for c in streams[i]] == [f"s{i}:{k}" for k in range(4)] + [None]


def test_steps_a_raising_step_fails_the_active_streams_and_the_loop_serves_new_ones(
    queues: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    """Steps: two streams of 10 tokens joined together; the 3rd step raises. Expect both streams to
    end with a 500 sharing one error id (one traceback logged), leave(why="error") for each, then
    a new stream served whole."""
    request_q, response_q = queues
    stepper = TokenStepper(raise_on_step=3)
    stepper.start.clear()
    replies = Replies(response_q)
    with _engine(queues, stepper) as engine:
        request_q.put(Generate("a", 10, "a"))
        wait_until(lambda: len(stepper.steps) == 1, 10, "the first step")
        request_q.put(Generate("b", 10, "b"))
        wait_until(lambda: engine.running_count == 2, 10, "b to reach the engine")
        stepper.start.set()
        streams = _read_streams(replies, 2)
        ends = [streams["a"][-1], streams["b"][-1]]
        assert all(type(e) is ErrorReply and e.status_code == 500 for e in ends)
        assert ends[0].message == ends[1].message and "error id" in ends[0].message
        assert len([r for r in caplog.records if "the model fell over" in str(r.exc_info)]) == 1
        wait_until(lambda: len(stepper.left) == 2, 10, "both to leave")
        assert sorted(stepper.left) == [("a", "error"), ("b", "error")]
        request_q.put(Generate("c", 3, "c"))
        assert [c.data for c in _read_stream(replies)] == ["c:0", "c:1", "c:2", None]


def test_steps_an_item_error_ends_that_stream_alone_and_done_carries_a_last_chunk(queues: Queues) -> None:
    request_q, response_q = queues

    class Stepper:
        def step(self, active: list[Generate]) -> list[Any]:
            return [Done("the end") if r.tokens == 0 else ValueError("broken") if r.tokens < 0 else "x" for r in active]

    with Engine(*queues) as engine:
        engine.steps(Generate, Stepper())
        request_q.put(Generate("done", 0))
        request_q.put(Generate("bad", -1))
        streams = _read_streams(Replies(response_q), 2)
        assert streams["done"] == [StreamChunk("done", "the end", True)]
        assert [(type(r), r.status_code) for r in streams["bad"]] == [(ErrorReply, 500)]


def test_steps_a_client_leaving_mid_stream_gets_leave_once_and_no_more_chunks(queues: Queues) -> None:
    """Steps: with_cancellation; an SSE client reads 2 tokens of a 50-token stream (held at 2) and
    hangs up. Expect leave(why="cancelled") exactly once, and no chunk of it sent after the cancel
    (the relay drops nothing); a later stream is served."""
    stepper = TokenStepper(hold_at=2)  # held once the 2 chunks the client reads are out: none in flight
    stepper.gate.clear()
    srv = server(queues, ROUTES, cancellation=True)
    with _engine(queues, stepper) as engine, running(srv) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            with client.stream("POST", "/generate", json={"tokens": 50, "tag": "leaver"}) as response:
                data: list[str] = []
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        data.append(line)
                    if len(data) == 2:
                        break
        wait_until(lambda: engine.cancelled == 1, 10, "the cancel to reach the engine")
        stepper.gate.set()
        wait_until(lambda: stepper.left == [("leaver", "cancelled")], 10, "the stream to leave")
        assert stepper.emitted["leaver"] <= 3  # the held step's token was made, and dropped
        later = _streams(url, [{"tokens": 3, "tag": "later"}])[0]
        assert [e["data"] for e in later] == ["later:0", "later:1", "later:2", None]
        assert stepper.left == [("leaver", "cancelled"), ("later", "done")]
        assert srv.ipc is not None and srv.ipc.dropped_count == 0


def test_steps_a_cancel_request_over_the_queues_ends_the_stream_and_nothing_follows(queues: Queues) -> None:
    request_q, response_q = queues
    stepper = TokenStepper(hold_at=3)
    stepper.gate.clear()
    replies = Replies(response_q)
    with _engine(queues, stepper) as engine:
        request_q.put(Generate("gone", 50, "gone"))
        assert [replies.next().data for _ in range(3)] == ["gone:0", "gone:1", "gone:2"]
        request_q.put(Generate("queued", 2, "queued"))  # cancelled before it joins: never reaches the stepper
        wait_until(lambda: engine.running_count == 2, 10, "the second request to wait")
        request_q.put(CancelRequest("queued", "disconnected"))
        request_q.put(CancelRequest("gone", "disconnected"))
        wait_until(lambda: engine.cancelled == 2, 10, "both cancels")
        stepper.gate.set()
        wait_until(lambda: stepper.left == [("gone", "cancelled")], 10, "the stream to leave")
        request_q.put(Generate("next", 1, "next"))
        assert [(c.id, c.data) for c in _read_stream(replies)] == [("next", "next:0"), ("next", None)]
        assert stepper.joined == ["gone", "next"]


def test_steps_one_response_q_message_per_step(queues: Queues) -> None:
    """Steps: 4 streams of 6 tokens joined together. Expect the messages on response_q to cut the
    chunks exactly at step boundaries (each message one step, or whole steps that waited together
    for the writer), never one message per chunk."""
    request_q, response_q = queues
    stepper = TokenStepper()
    stepper.start.clear()
    replies = Replies(response_q)
    with _engine(queues, stepper) as engine:
        request_q.put(Generate(0, 6, "s0"))
        wait_until(lambda: len(stepper.steps) == 1, 10, "the first step")
        for i in range(1, 4):
            request_q.put(Generate(i, 6, f"s{i}"))
        wait_until(lambda: engine.running_count == 4, 10, "all four in the engine")
        stepper.start.set()
        _read_streams(replies, 4)
    sizes = stepper.sizes  # the last step ends the streams: its Done() finals are in its message
    lengths = [len(m) for m in replies.messages]
    assert sum(lengths) == sum(sizes) and len(lengths) <= len(sizes)
    boundaries = {sum(sizes[: i + 1]) for i in range(len(sizes))}
    assert {sum(lengths[: i + 1]) for i in range(len(lengths))} <= boundaries
    assert max(lengths) >= 4


def test_steps_stop_lets_streams_finish_or_leaves_them_stopped(queues: Queues) -> None:
    """Steps: one stream held at 2 tokens; stop(timeout=0.2). Expect a 503 for it after its two
    chunks and leave(why="stopped"); the engine stopped."""
    request_q, response_q = queues
    stepper = TokenStepper(hold_at=2)
    stepper.gate.clear()
    replies = Replies(response_q)
    engine = _engine(queues, stepper).start()
    request_q.put(Generate("s", 10, "s"))
    assert [replies.next().data for _ in range(2)] == ["s:0", "s:1"]
    wait_until(lambda: len(stepper.steps) == 3, 10, "the held step")
    stopper = threading.Thread(target=engine.stop, args=(0.2,))
    stopper.start()
    assert replies.next() == ErrorReply("s", "the engine stopped before this request finished", 503)
    stepper.gate.set()
    stopper.join(20)
    assert not engine.is_running and stepper.left == [("s", "stopped")]


def test_steps_async_stepper_and_bad_arguments(queues: Queues) -> None:
    request_q, response_q = queues
    left: list[tuple[Hashable, str]] = []

    class AsyncStepper:
        def __init__(self) -> None:
            self.count: dict[Hashable, int] = {}

        async def join(self, requests: list[Generate]) -> None:
            for r in requests:
                self.count[r.id] = 0

        async def step(self, active: list[Generate]) -> list[Any]:
            await asyncio.sleep(0)
            out: list[Any] = []
            for r in active:
                self.count[r.id] += 1
                out.append(Done(self.count[r.id]) if self.count[r.id] == r.tokens else self.count[r.id])
            return out

        async def leave(self, request: Generate, why: str) -> None:
            left.append((request.id, why))

    with Engine(*queues) as engine:
        with pytest.raises(ValueError, match="max_active"):
            engine.steps(Generate, AsyncStepper(), max_active=0)
        with pytest.raises(TypeError, match="step"):
            engine.steps(Generate, object())
        engine.steps(Generate, AsyncStepper())
        request_q.put(Generate("a", 3))
        assert [(c.data, c.is_final) for c in _read_stream(Replies(response_q))] == [(1, False), (2, False), (3, True)]
        wait_until(lambda: left == [("a", "done")], 10, "leave")


def test_steps_a_raising_join_or_a_wrong_length_fails_those_streams_and_leave_says_error(queues: Queues) -> None:
    """Steps: join() raises EngineError(429) for a request tagged "full"; step() returns one item
    too few while a request tagged "short" is active. Expect 429 for the first, a 500 for the
    second, leave(why="error") once each, and a plain request served afterwards."""
    request_q, response_q = queues
    left: list[tuple[Hashable, str]] = []

    class Picky:
        def join(self, requests: list[Generate]) -> None:
            if any(r.tag == "full" for r in requests):
                raise EngineError("no room for it", 429)

        def step(self, active: list[Generate]) -> list[Any]:
            items: list[Any] = [Done("ok") for _ in active]
            return items[:-1] if any(r.tag == "short" for r in active) else items

        def leave(self, request: Generate, why: str) -> None:
            left.append((request.tag, why))

    replies = Replies(response_q)
    with Engine(*queues) as engine:
        engine.steps(Generate, Picky())
        request_q.put(Generate("a", 1, "full"))
        assert replies.next() == ErrorReply("a", "no room for it", 429)
        request_q.put(Generate("b", 1, "short"))
        wrong = replies.next()
        assert (wrong.id, wrong.status_code) == ("b", 500) and "error id" in wrong.message
        request_q.put(Generate("c", 1, "plain"))
        assert replies.next() == StreamChunk("c", "ok", True)
        wait_until(lambda: len(left) == 3, 10, "three leaves")
        assert left == [("full", "error"), ("short", "error"), ("plain", "done")]


def test_steps_stop_lets_active_and_waiting_streams_finish_within_its_timeout(queues: Queues) -> None:
    """Steps: max_active=1; one stream held at 2 tokens, a second waiting to join; stop(timeout=30)
    in a thread; release. Expect both streams whole, leave(why="done") for each, stop() returning."""
    request_q, response_q = queues
    stepper = TokenStepper(hold_at=2)
    stepper.gate.clear()
    replies = Replies(response_q)
    engine = _engine(queues, stepper, max_active=1).start()
    request_q.put(Generate("a", 4, "a"))
    request_q.put(Generate("b", 3, "b"))
    wait_until(lambda: len(stepper.steps) == 3 and engine.running_count == 2, 10, "a held, b waiting")
    stopper = threading.Thread(target=engine.stop, args=(30.0,))
    stopper.start()
    wait_until(lambda: engine.is_stopping, 10, "stop() to begin")
    stepper.gate.set()
    streams = _read_streams(replies, 2)
    assert [c.data for c in streams["a"]] == ["a:0", "a:1", "a:2", "a:3", None]
    assert [c.data for c in streams["b"]] == ["b:0", "b:1", "b:2", None]
    stopper.join(20)
    assert not stopper.is_alive() and stepper.left == [("a", "done"), ("b", "done")]
