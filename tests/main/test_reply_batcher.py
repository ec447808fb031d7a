"""ReplyBatcher: replies leave in order, several to a message under load, nothing lost on close,
and one reply that can't be pickled fails only its own request. Over a real server: many SSE
streams and unary requests answered by a stepping main loop, one message per step."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest

from features.streaming.step_loop import StepLoop
from features.streaming.streaming import generate_route
from isolated_api import ReplyBatcher
from isolated_api.main import reply_batcher
from isolated_api.main.relay import Relay
from isolated_api.testing import drain_queue, running, wait_until
from tests.helpers import Done, Work, answer_upper, builder, upper_route
from tests.main.relay_doubles import Collector, Msg


def _replies_in(messages: list[Any]) -> list[Any]:
    replies: list[Any] = []
    for message in messages:
        replies.extend(message if type(message) is list else [message])
    return replies


def _read_messages(response_q: Any, replies: int) -> list[Any]:
    """Messages read from ``response_q`` until they hold ``replies`` replies (10 s at most)."""
    messages: list[Any] = []

    def enough() -> bool:
        messages.extend(drain_queue(response_q))
        return len(_replies_in(messages)) >= replies

    wait_until(enough, 10, f"{replies} replies on response_q")
    return messages


def test_reply_batcher_keeps_order_and_writes_everything_before_close_returns(queues: tuple[Any, Any]) -> None:
    """Steps: put 2,000 replies from one thread, close at once. Expect all 2,000 on response_q in
    put order, in no more messages than replies; put after close refused."""
    _, response_q = queues
    batcher = ReplyBatcher(response_q)
    for i in range(2000):
        batcher.put(Done(str(i), "x"))
    batcher.close()
    messages = _read_messages(response_q, 2000)
    assert [reply.id for reply in _replies_in(messages)] == [str(i) for i in range(2000)]
    assert batcher.replies == 2000 and batcher.messages == len(messages) <= 2000
    with pytest.raises(ValueError, match="closed"):
        batcher.put(Done("late", "x"))


def test_reply_batcher_writing_at_once_leaves_its_writer_thread_asleep(
    queues: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps: with every reply due at once (the quiet interval set to 0), put 200 replies one by
    one from this thread. Expect all 200 written by this thread, in order, and the writer thread,
    which nothing was handed to, never woken."""
    monkeypatch.setattr(reply_batcher, "_QUIET", 0.0)
    _, response_q = queues
    with ReplyBatcher(response_q) as batcher:
        batcher.put(Done("first", "x"))  # starts the writer thread
        wait_until(lambda: batcher._thread is not None and _waits_on(batcher), 10, "the writer thread to wait")
        for i in range(200):
            batcher.put(Done(str(i), "x"))
        assert batcher.flush(10)
        assert batcher.direct_writes == 201
        assert batcher.writer_wakeups == 0
    messages = _read_messages(response_q, 201)
    assert [reply.id for reply in _replies_in(messages)] == ["first"] + [str(i) for i in range(200)]


def _waits_on(batcher: ReplyBatcher) -> bool:
    # A thread waiting on a Condition has its waiter lock in the condition's queue.
    return len(batcher._wake._waiters) > 0  # type: ignore[attr-defined]


def test_reply_batcher_put_many_is_one_message_and_a_bad_reply_fails_alone(queues: tuple[Any, Any]) -> None:
    """Steps: put_many of three replies, the middle one unpicklable. Expect the two good replies
    and an ErrorReply(500) for the bad one's id, in order; flush() returns once written."""
    _, response_q = queues
    with ReplyBatcher(response_q) as batcher:
        batcher.put_many([Done("a", "1"), Done("b", lambda: None), Done("c", "3")])  # type: ignore[arg-type]
        assert batcher.flush(10)
    replies = _replies_in(_read_messages(response_q, 3))
    assert [type(r).__name__ for r in replies] == ["Done", "ErrorReply", "Done"]
    failed = replies[1]
    assert failed.id == "b" and failed.status_code == 500
    # The pickling error's text stays in this process's log; the client gets an error id.
    assert failed.message.startswith("internal error (error id ") and "pickle" not in failed.message
    assert batcher.failed == 1


def test_reply_batcher_writes_a_streams_first_chunk_at_once_and_batches_the_rest(
    queues: tuple[Any, Any], relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps: a relay reading response_q in this process, two streams forwarded to a recording
    endpoint; with no write ever counted as quiet (the interval set to 1e9 s), put each stream's
    first chunk and more chunks of the first stream. Expect each first chunk written by this
    thread at once (delivered before put returns), the later chunks left to the writer thread,
    and every chunk delivered in put order."""
    monkeypatch.setattr(reply_batcher, "_QUIET", 1e9)
    _, response_q = queues
    endpoint = Collector("worker")
    relay.forward(endpoint, "s", request=Msg("s"), streaming=True)
    relay.forward(endpoint, "t", request=Msg("t"), streaming=True)
    with ReplyBatcher(response_q) as batcher:
        batcher.put(Msg("s", "0"))
        assert [m.body for m in endpoint.replies] == ["0"] and batcher.direct_writes == 1
        for i in range(1, 4):
            batcher.put(Msg("s", str(i)))
        assert batcher.flush(10)
        assert batcher.direct_writes == 1  # the stream had started: these waited for company
        batcher.put(Msg("t", "first"))
        assert endpoint.replies[-1].body == "first" and batcher.direct_writes == 2
        batcher.put(Msg("s", "4", is_final=True))
        assert batcher.flush(10)
    assert [(m.id, m.body) for m in endpoint.replies] == [
        ("s", "0"),
        ("s", "1"),
        ("s", "2"),
        ("s", "3"),
        ("t", "first"),
        ("s", "4"),
    ]


def test_reply_batcher_writes_the_reply_nothing_else_waits_behind_at_once(queues: tuple[Any, Any]) -> None:
    """Steps: a server; a main loop replying through a ReplyBatcher; one client sends 40 requests
    one after another. Expect each reply written by the main loop's own thread as it is put (40
    direct writes, none left to the writer thread): with no other request awaited there is nothing
    to batch it with, however soon it follows the last write."""
    request_q, response_q = queues
    server = (
        (builder("lone").routes.with_route("/upper", upper_route, methods=["POST"]).done().subprocess.with_ipc(*queues))
        .done()
        .build()
    )
    batcher = ReplyBatcher(response_q)

    def main_loop() -> None:
        while (work := request_q.get()) is not None:
            batcher.put(answer_upper(work))

    loop = threading.Thread(target=main_loop, daemon=True)
    loop.start()
    try:
        with running(server) as url, httpx.Client(timeout=10, trust_env=False) as client:
            for i in range(40):
                assert client.post(f"{url}/upper", json={"text": f"t{i}"}).json()["text"] == f"T{i}"
    finally:
        request_q.put(None)
        loop.join(10)
        batcher.close()
    assert batcher.replies == batcher.direct_writes == 40


def _stream_texts(body: str) -> tuple[list[int], str]:
    indexes, text = [], ""
    for line in body.splitlines():
        if line.startswith("data: "):
            token = json.loads(line[6:])
            indexes.append(token["index"])
            text += token["text"]
    return indexes, text


def test_reply_batcher_serves_streams_and_requests_through_a_stepping_main_loop(queues: tuple[Any, Any]) -> None:
    """Steps: a server; a main loop that waits for 16 streams, then each step puts one token for
    every stream in one message; 16 SSE clients of 40 tokens and 20 unary requests at once, then
    one request whose reply can't be pickled. Expect every stream complete and in order, every
    unary reply right, a 500 naming the failure, far fewer messages than replies, all of them
    handed to the relay in this process (not through response_q), nothing left pending."""
    server = (
        builder("batched")
        .routes.with_route("/generate", generate_route, methods=["POST"])
        .with_route("/upper", upper_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )

    def answer(request: Any) -> Any:
        if type(request) is not Work:
            return None
        if request.text == "bad":
            return Done(request.id, lambda: None)  # type: ignore[arg-type]  # can't be pickled
        return answer_upper(request)

    loop = StepLoop(*queues, answer=answer, batch=16).start()
    try:
        with running(server) as url:

            async def clients() -> tuple[list[httpx.Response], list[httpx.Response], httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    streams = [client.post("/generate", json={"max_tokens": 40}) for _ in range(16)]
                    unary = [client.post("/upper", json={"text": f"w{i}"}) for i in range(20)]
                    done = await asyncio.gather(*streams, *unary)
                    bad = await client.post("/upper", json={"text": "bad"})
                return list(done[:16]), list(done[16:]), bad

            streams, unary, bad = asyncio.run(clients())
            expected_text = "".join(f"t{i} " for i in range(40))
            for response in streams:
                assert response.status_code == 200
                indexes, text = _stream_texts(response.text)
                assert text == expected_text and indexes == sorted(indexes)
            assert sorted(r.json()["text"] for r in unary) == sorted(f"W{i}" for i in range(20))
            relay = server.ipc
            assert relay is not None and relay.is_running  # subprocess mode: the relay serves this server
            wait_until(lambda: relay.pending_count == 0, 10, "the relay to have no route left")
            # A reply that can't be pickled fails its own request, with an error id, not the reason.
            assert bad.status_code == 500 and bad.json()["detail"].startswith("internal error (error id ")
            # 16 streams x 40 tokens went out in about one message per step, and the relay being
            # in this process, none of them crossed response_q.
            assert loop.batcher.replies == 16 * 40 + 21
            assert loop.batcher.messages <= loop.steps + 21 < loop.batcher.replies / 4
            assert relay.local_replies == loop.batcher.replies
    finally:
        loop.stop()


def test_reply_batcher_bundles_split_between_two_workers_reach_their_own_streams(queues: tuple[Any, Any]) -> None:
    """Steps: a server with 2 HTTP workers; a main loop that waits for 12 streams, then each step
    puts one token for every stream in one message, whichever worker serves it; 12 SSE clients
    of 30 tokens at once. Expect each client its own 30 tokens, complete and in order (a token
    routed to the wrong stream would show as a duplicate or a gap), nothing left pending."""
    server = (
        builder("batched-workers")
        .routes.with_route("/generate", generate_route, methods=["POST"])
        .done()
        .uvicorn.with_workers(2)
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    loop = StepLoop(*queues, batch=12).start()
    try:
        with running(server) as url:

            async def clients() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    posts = [client.post("/generate", json={"max_tokens": 30}) for _ in range(12)]
                    return list(await asyncio.gather(*posts))

            expected = "".join(f"t{i} " for i in range(30))
            for response in asyncio.run(clients()):
                assert response.status_code == 200
                assert _stream_texts(response.text) == (list(range(30)), expected)
            relay = server.ipc
            assert relay is not None and relay.is_running  # subprocess mode: the relay serves this server
            wait_until(lambda: relay.pending_count == 0, 10, "the relay to have no route left")
            assert relay.local_replies == loop.batcher.replies == 12 * 30
    finally:
        loop.stop()


def test_reply_batcher_refuses_a_bad_max_batch(queues: tuple[Any, Any]) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        ReplyBatcher(queues[1], max_batch=0)


def test_reply_batcher_a_bundle_is_never_split_between_messages(queues: tuple[Any, Any]) -> None:
    """Steps: max_batch=4; ten bundles of 10 replies (a step's chunks each), put from one thread.
    Expect every bundle whole inside one message (a message may hold several), order kept."""
    _, response_q = queues
    batcher = ReplyBatcher(response_q, max_batch=4)
    for step in range(10):
        batcher.put_bundle([Done(f"{step}-{i}", "x") for i in range(10)])
    batcher.close()
    messages = _read_messages(response_q, 100)
    ids = [reply.id for reply in _replies_in(messages)]
    assert ids == [f"{step}-{i}" for step in range(10) for i in range(10)]
    for message in messages:
        steps = [reply.id.split("-")[0] for reply in (message if type(message) is list else [message])]
        assert all(steps.count(s) == 10 for s in set(steps))
