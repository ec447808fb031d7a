"""``response_q.put`` in the process whose relay reads that queue hands the reply over directly
(local_put.py); puts from other processes, forked or spawned, still cross the queue; the queue's
own ``put`` is back once the relay stops."""

from __future__ import annotations

import multiprocessing
import queue
import threading
from typing import Any

import msgspec
import pytest

from isolated_api import Heartbeat, MsgspecCodec
from isolated_api.main.local_put import LocalPut
from isolated_api.main.relay import Relay
from isolated_api.testing import wait_until
from tests.main.relay_doubles import Collector, Msg


def _put_from_child(response_q: Any, reply: Msg) -> None:
    response_q.put(reply)


def test_local_put_hands_replies_to_the_relay_in_order_and_nothing_crosses_the_queue(queues: Any) -> None:
    rq, sq = queues
    relay = Relay(rq, sq, queue_timeout=1)
    relay.start()
    try:
        assert relay.takes_local_puts and isinstance(vars(sq)["put"], LocalPut)
        sink = Collector()
        relay.forward(sink, "a", request=Msg("a"))
        # A lone reply after a quiet moment: routed and written by the caller's own thread.
        sq.put(Msg("a", "reply"))
        assert [r.body for r in sink.replies] == ["reply"]
        assert sink.threads == {threading.current_thread().name}
        # Replies that come fast (a stream's tokens) collect and go out several at a time.
        relay.forward(sink, "s", request=Msg("s"), streaming=True)
        for n in range(200):
            sq.put_nowait(Msg("s", str(n), is_final=n == 199))
        wait_until(lambda: relay.pending_count == 0, 10, "the stream's final chunk routed")
        assert [r.body for r in sink.replies] == ["reply", *(str(n) for n in range(200))]
        assert relay.local_replies == 201 and sq.empty()
        # A beat is counted at once; a list put is a list of replies.
        sq.put(Heartbeat())
        assert relay.beats == 1
        relay.forward(sink, "b1", request=Msg("b1"))
        relay.forward(sink, "b2", request=Msg("b2"))
        sq.put([Msg("b1", "x"), Msg("b2", "y")])
        wait_until(lambda: relay.pending_count == 0, 10, "the list's replies routed")
        assert [r.body for r in sink.replies[-2:]] == ["x", "y"] and relay.dropped_count == 0
    finally:
        relay.close()
    assert "put" not in vars(sq)


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_local_put_leaves_other_processes_puts_on_the_queue(method: str) -> None:
    ctx = multiprocessing.get_context(method)
    rq, sq = ctx.Queue(), ctx.Queue()
    relay = Relay(rq, sq, queue_timeout=1)
    relay.start()
    try:
        sink = Collector()
        relay.forward(sink, "from-child", request=Msg("from-child"))
        # A forked child inherits the replaced put; it must see it is not the relay's process.
        child = ctx.Process(  # type: ignore[attr-defined]
            target=_put_from_child, args=(sq, Msg("from-child", "hi"))
        )
        child.start()
        child.join(30)
        assert child.exitcode == 0
        wait_until(lambda: len(sink.replies) == 1, 10, "the child's reply, read from the queue")
        assert sink.replies[0].body == "hi" and relay.local_replies == 0
        assert sink.threads == {"isolated-api-relay"}
    finally:
        relay.close()
        for q in (rq, sq):
            q.cancel_join_thread()
            q.close()


def test_local_put_is_given_back_when_the_relay_stops(queues: Any) -> None:
    rq, sq = queues
    relay = Relay(rq, sq, queue_timeout=1)
    relay.start()
    relay.close()
    assert "put" not in vars(sq)
    sq.put(Msg("after"))
    assert sq.get(timeout=10) == Msg("after")


def test_local_put_leaves_subclasses_and_replaced_puts_alone() -> None:
    class CountingQueue(queue.Queue[Any]):
        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            super().put(item, block, timeout)

    theirs: list[Any] = []
    replaced: queue.Queue[Any] = queue.Queue()
    replaced.put = theirs.append  # type: ignore[method-assign,assignment]
    for response_q in (CountingQueue(), replaced):
        relay = Relay(queue.Queue(), response_q, queue_timeout=1)
        relay.start()
        try:
            assert not relay.takes_local_puts
        finally:
            relay.close()
    assert replaced.put == theirs.append


class Token(msgspec.Struct, tag=True):
    id: str
    text: str


def test_local_put_decodes_bytes_with_a_binary_codec_in_put_order() -> None:
    codec = MsgspecCodec(Token)
    request_q: queue.Queue[Any] = queue.Queue()
    response_q: queue.Queue[Any] = queue.Queue()
    relay = Relay(request_q, response_q, queue_timeout=1, codec=codec)
    relay.start()
    try:
        assert relay.takes_local_puts
        sink = Collector()
        relay.forward(sink, "t", request=Token("t", "q"), streaming=True)
        for n in range(50):
            token = Token("t", str(n))
            response_q.put(codec.encode(token) if n % 2 else token)
        response_q.put(b"\xff not msgspec")
        wait_until(lambda: len(sink.replies) == 50, 10, "50 tokens")
        assert sink.replies == [Token("t", str(n)) for n in range(50)]
        assert relay.dropped_count == 1 and response_q.empty()
    finally:
        relay.close()
