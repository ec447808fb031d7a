"""The main-process relay and the pipe framing, with real queues, real pipes and real threads:
replies reach the endpoint that owns their id and no other, nothing unbounded is kept, a torn
frame from a killed child is discarded, and requests arrive on request_q as the user's objects."""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Hashable
from multiprocessing.connection import Connection
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolated_api.main.pipe_endpoint import PipeEndpoint
from isolated_api.main.relay import Relay
from isolated_api.shared.errors import ChannelClosedError, DuplicateRequestIdError, QueueFullError
from isolated_api.shared.framing import (
    FrameDecoder,
    Kind,
    dumps,
    frame,
    loads,
    request_body,
    request_frame,
    split_request_body,
)
from isolated_api.shared.messages import ErrorReply
from isolated_api.testing import wait_until
from tests.main.relay_doubles import Collector, Msg


def test_relay_routes_each_reply_to_the_endpoint_that_sent_the_request(queues: tuple[Any, Any], relay: Relay) -> None:
    rq, sq = queues
    a, b = Collector("a"), Collector("b")
    for i in range(50):
        relay.forward(a if i % 2 else b, f"id{i}", request=Msg(f"id{i}"))
    assert relay.pending_count == 50
    for i in reversed(range(50)):
        sq.put(Msg(f"id{i}", "reply"))
    wait_until(lambda: len(a.replies) + len(b.replies) == 50, 10, "50 replies")
    assert sorted(r.id for r in a.replies) == sorted(f"id{i}" for i in range(50) if i % 2)
    assert sorted(r.id for r in b.replies) == sorted(f"id{i}" for i in range(50) if not i % 2)
    assert relay.pending_count == 0 and relay.dropped_count == 0
    received = [rq.get(timeout=5) for _ in range(50)]
    assert {r.id for r in received} == {f"id{i}" for i in range(50)}


def test_relay_drops_and_counts_unknown_duplicate_and_idless_replies(queues: tuple[Any, Any], relay: Relay) -> None:
    _, sq = queues
    a = Collector("a")
    relay.forward(a, 1, request=Msg(1))
    for stray in (Msg(2), "no id", Msg(["unhashable"]), Msg(1, "first"), Msg(1, "second")):
        sq.put(stray)
    wait_until(lambda: relay.dropped_count == 4, 10, "4 drops")
    assert [r.body for r in a.replies] == ["first"]
    assert relay.pending_count == 0


def test_relay_keeps_stream_routes_until_the_final_chunk_or_an_error(queues: tuple[Any, Any], relay: Relay) -> None:
    _, sq = queues
    a = Collector("a")
    relay.forward(a, "s1", request=Msg("s1"), streaming=True)
    relay.forward(a, "s2", request=Msg("s2"), streaming=True)
    for i in range(3):
        sq.put(Msg("s1", str(i)))
    sq.put(Msg("s1", "end", is_final=True))
    sq.put(ErrorReply("s2", "boom"))
    sq.put(Msg("s1", "after the end"))
    wait_until(lambda: relay.dropped_count == 1, 10, "the chunk after the end to be dropped")
    assert [r.body for r in a.replies if r.id == "s1"] == ["0", "1", "2", "end"]
    assert relay.pending_count == 0


def test_relay_refuses_duplicate_ids_and_full_queues() -> None:
    bounded: queue.Queue[Any] = queue.Queue(maxsize=1)
    relay = Relay(bounded, queue.Queue(), queue_timeout=0.05)
    relay.start()
    try:
        a = Collector("a")
        relay.forward(a, 1, request=Msg(1))
        with pytest.raises(DuplicateRequestIdError):
            relay.forward(a, 1, request=Msg(1))
        with pytest.raises(QueueFullError, match="stayed full"):
            relay.forward(a, 2, request=Msg(2))
        assert relay.pending_count == 1  # the refused request left no route behind
        assert relay.abandon(a, 1) and relay.pending_count == 0
    finally:
        relay.close()
    with pytest.raises(ChannelClosedError):
        relay.forward(Collector("late"), 3, request=Msg(3))


def test_relay_close_wakes_its_reader_and_frees_the_queue_for_another(queues: tuple[Any, Any]) -> None:
    rq, sq = queues
    first = Relay(rq, sq, queue_timeout=0.01)
    first.start()
    second = Relay(rq, sq, queue_timeout=0.01)
    with pytest.raises(RuntimeError, match="already read"):
        second.start()
    first.close()
    assert not first.is_running
    second.start()
    try:
        a = Collector("a")
        second.forward(a, 1, request=Msg(1))
        sq.put(Msg(1, "ok"))
        wait_until(lambda: len(a.replies) == 1, 10, "the reply through the second relay")
    finally:
        second.close()


def test_relay_passes_prepickled_requests_as_the_users_objects(queues: tuple[Any, Any], relay: Relay) -> None:
    """A child's request arrives pickled; through a multiprocessing queue it is not unpickled and
    pickled again, yet the main process gets its own object."""
    rq, _ = queues
    relay.forward(Collector("a"), "p", payload=dumps(Msg("p", "payload")))
    assert rq.get(timeout=5) == Msg("p", "payload")
    thread_relay = Relay(queue.Queue(), queue.Queue(), queue_timeout=0.01)
    thread_relay.start()
    try:
        thread_relay.forward(Collector("b"), "t", payload=dumps(Msg("t", "x")))
        assert thread_relay._request_q.get(timeout=5) == Msg("t", "x")
    finally:
        thread_relay.close()


@given(
    ids=st.lists(st.one_of(st.integers(), st.text(max_size=8), st.tuples(st.integers(), st.booleans())), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
@settings(max_examples=150, deadline=None)
def test_relay_frames_survive_any_split(ids: list[Hashable], cuts: list[int]) -> None:
    stream = b"".join(frame(Kind.REQUEST, request_body(i, dumps(("payload", i)))) for i in ids)
    decoder = FrameDecoder()
    frames: list[tuple[Kind, bytes | bytearray]] = []
    last = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        frames += decoder.feed(stream[last:cut])
        last = cut
    assert not decoder.has_partial_frame
    decoded = [split_request_body(body) for _, body in frames]
    assert [rid for rid, _ in decoded] == ids
    assert [loads(payload) for _, payload in decoded] == [("payload", i) for i in ids]


@given(
    owners=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=40),
    order=st.randoms(use_true_random=False),
)
@settings(max_examples=40, deadline=None)
def test_relay_any_reply_interleaving_reaches_the_right_endpoints(owners: list[int], order: Any) -> None:
    """Requests from up to 4 endpoints, replies in a random order: each endpoint gets exactly its
    own replies, none lost, none duplicated."""
    rq: queue.Queue[Any] = queue.Queue()
    sq: queue.Queue[Any] = queue.Queue()
    relay = Relay(rq, sq, queue_timeout=0.01)
    relay.start()
    try:
        endpoints = [Collector(str(n)) for n in range(4)]
        for rid, owner in enumerate(owners):
            relay.forward(endpoints[owner], rid, request=Msg(rid))
        replies = [Msg(rid, f"reply-{rid}") for rid in range(len(owners))]
        order.shuffle(replies)
        for reply in replies:
            sq.put(reply)
        wait_until(lambda: sum(len(e.replies) for e in endpoints) == len(owners), 10, "all replies")
        for n, endpoint in enumerate(endpoints):
            assert sorted(r.id for r in endpoint.replies) == [rid for rid, o in enumerate(owners) if o == n]
        assert relay.pending_count == 0 and relay.dropped_count == 0
    finally:
        relay.close()


def _pipe_pair() -> tuple[Connection, Connection]:
    return multiprocessing.Pipe(duplex=False)


def test_relay_pipe_endpoint_discards_a_torn_frame_and_reports_abandoned_ids(queues: tuple[Any, Any]) -> None:
    """A child killed half-way through writing a frame: the partial frame is discarded, its
    finished requests are reported abandoned, and the relay keeps serving other endpoints."""
    rq, sq = queues
    relay = Relay(rq, sq, queue_timeout=0.01)
    relay.start()
    up_r, up_w = _pipe_pair()
    down_r, down_w = _pipe_pair()
    lost: list[tuple[list[Hashable], bool]] = []
    endpoint = PipeEndpoint(
        relay,
        up_r,
        down_w,
        name="child",
        on_ready=lambda e, i: None,
        on_lost=lambda e, ids, torn: lost.append((ids, torn)),
    )
    endpoint.start()
    try:
        whole = request_frame(Kind.REQUEST, "done", b"POST /done", dumps(Msg("done")))
        torn = request_frame(Kind.REQUEST, "torn", b"POST /torn", dumps(Msg("torn", "x" * 10_000)))
        os.write(up_w.fileno(), whole + torn[: len(torn) // 2])
        assert rq.get(timeout=5) == Msg("done")
        up_w.close()
        endpoint.join(10)
        assert lost == [(["done"], True)]
        assert relay.pending_count == 0
        other = Collector("other")
        relay.forward(other, "next", request=Msg("next"))
        sq.put(Msg("next", "fine"))
        wait_until(lambda: len(other.replies) == 1, 10, "the relay to keep serving")
    finally:
        down_r.close()
        relay.close()


def test_relay_forwards_a_list_of_replies_for_one_endpoint_as_one_bundle(queues: tuple[Any, Any], relay: Relay) -> None:
    """Steps: a list message whose replies all belong to endpoint a; then one mixing a, b, an
    unknown id and a final chunk. Expect the first reached a as one bundle entry with the message's
    bytes; the second split by owner in order, the stranger dropped and counted, routes ended."""
    _, sq = queues

    class Recorder(Collector):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.entries: list[tuple[Any, bytes | None]] = []

        def deliver(self, replies: list[Any], raws: list[bytes | None]) -> None:
            with self.lock:
                self.entries.extend(zip(replies, raws, strict=True))

    a, b = Recorder("a"), Recorder("b")
    relay.forward(a, "s", request=Msg("s"), streaming=True)
    relay.forward(a, "u", request=Msg("u"))
    relay.forward(b, "v", request=Msg("v"))
    # Through the queue, as another process's put arrives (this process's own put is handed
    # over without bytes: tests/main/test_local_put.py).
    put = type(sq).put
    put(sq, [Msg("s", "0"), Msg("s", "1"), Msg("u", "unary")])
    wait_until(lambda: len(a.entries) == 1, 10, "the bundle")
    bundle, raw = a.entries[0]
    assert type(bundle) is list and [m.body for m in bundle] == ["0", "1", "unary"]
    assert raw is not None and loads(raw) == bundle
    put(sq, [Msg("v", "for b"), Msg("nobody"), Msg("s", "2"), Msg("s", "end", is_final=True)])
    wait_until(lambda: len(a.entries) == 3 and len(b.entries) == 1, 10, "the split bundle")
    assert [m.body for m, _ in a.entries[1:]] == ["2", "end"]
    assert [m.body for m, _ in b.entries] == ["for b"]
    assert relay.dropped_count == 1 and relay.pending_count == 0


def test_dumps_honours_reducers_registered_with_forking_pickler() -> None:
    """Steps: use dumps here and in another thread (each keeps a pickler), then register a reducer
    for a class with ForkingPickler. Expect dumps (our faster pickler) to use it in both threads,
    as multiprocessing queues would."""
    from concurrent.futures import ThreadPoolExecutor
    from multiprocessing.reduction import ForkingPickler

    class Special:
        pass

    with ThreadPoolExecutor(1) as other_thread:
        assert loads(dumps(Msg("warm"))) == Msg("warm")
        assert loads(other_thread.submit(dumps, Msg("warm")).result(10)) == Msg("warm")
        ForkingPickler.register(Special, lambda obj: (str, ("reduced",)))
        try:
            assert loads(other_thread.submit(dumps, Special()).result(10)) == "reduced"
            assert loads(dumps(Special())) == "reduced"
        finally:
            ForkingPickler._extra_reducers.pop(Special, None)  # type: ignore[attr-defined]


class _PicklesItsPartsWithDumps:
    """A __reduce__ that calls dumps itself, while the thread's pickler is busy with this object."""

    def __init__(self, part: Msg) -> None:
        self.part = part

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_from_dumps, (dumps(self.part),))


def _rebuild_from_dumps(data: bytes) -> Msg:
    part: Msg = loads(data)
    return part


def test_dumps_reuses_its_pickler_without_keeping_what_it_pickled() -> None:
    """Steps: pickle the same object twice, one that calls dumps from its __reduce__, one of
    1 MB, then drop the object. Expect every result to stand alone (no memo references across
    calls), nested calls to work, and nothing pickled kept alive by the reused pickler."""
    import weakref

    first = Msg("same")
    assert loads(dumps(first)) == loads(dumps(first)) == first
    assert loads(dumps([first, _PicklesItsPartsWithDumps(Msg("inner")), first])) == [first, Msg("inner"), first]
    big = Msg("x" * (1 << 20))
    assert loads(dumps(big)) == big
    ref = weakref.ref(big)
    del big
    assert ref() is None


def test_frame_decoder_refuses_an_unknown_kind() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(Kind.REPLY, b"ok")[:3]) == []
    assert decoder.feed(frame(Kind.REPLY, b"ok")[3:]) == [(Kind.REPLY, b"ok")]
    with pytest.raises(ValueError, match="unknown frame kind 99"):
        decoder.feed(b"\x00\x00\x00\x01\x63x")


def test_relay_answers_everything_only_for_the_last_awaited_unary_replies(relay: Relay) -> None:
    """Steps: forward two unary requests and a stream; ask which reply sets end everything the
    relay awaits. Expect True only for replies to every pending request, all of them unary."""
    a = Collector("a")
    relay.forward(a, "u1", request=Msg("u1"))
    relay.forward(a, "u2", request=Msg("u2"))
    assert not relay.answers_everything([Msg("u1")])  # u2 still awaited
    assert relay.answers_everything([Msg("u1"), Msg("u2")])
    assert not relay.answers_everything([Msg("u1"), Msg("u1")])  # twice the same request
    assert not relay.answers_everything([Msg("u1"), Msg("nobody")])
    assert not relay.answers_everything([Msg(["unhashable"]), Msg("u2")])
    relay.route_local([Msg("u1")])
    assert relay.answers_everything([Msg("u2")])
    assert not relay.answers_everything([Msg("nobody")])  # one reply, one route, not its own
    assert not relay.answers_everything([Msg(["unhashable"])])
    relay.forward(a, "s", request=Msg("s"), streaming=True)
    assert not relay.answers_everything([Msg("u2"), Msg("s", is_final=True)])  # a stream may go on
    relay.route_local([Msg("u2")])
    assert not relay.answers_everything([Msg("s", is_final=True)])  # the only route, a stream


class Broken:
    name = "broken"

    def deliver(self, replies: list[Any], raws: list[bytes | None]) -> None:
        raise RuntimeError("this endpoint is gone")


def test_relay_route_local_hands_single_replies_over_as_the_queue_would(queues: tuple[Any, Any]) -> None:
    """Steps: hand replies made in this process to the relay one at a time (a unary reply, a
    late second one, stream chunks, one without an id, one for an endpoint that fails). Expect:
    each delivered on this thread before route_local returns, to its own endpoint only; strays
    dropped and counted; a stream's route kept until its final chunk; a failing endpoint ends
    its route without raising into the caller; one round trip observed per ended route."""
    rq, sq = queues
    observed: list[float] = []
    relay = Relay(rq, sq, queue_timeout=0.01, observe_round_trip=observed.append)
    relay.start()
    try:
        a, b = Collector("a"), Collector("b")
        relay.forward(a, "u", request=Msg("u"))
        relay.forward(b, "s", request=Msg("s"), streaming=True)
        relay.forward(Broken(), "x", request=Msg("x"))
        relay.route_local([Msg("u", "reply")])
        assert [(r.id, r.body) for r in a.replies] == [("u", "reply")] and relay.pending_count == 2
        relay.route_local([Msg("u", "late")])
        relay.route_local(["no id"])
        assert relay.dropped_count == 2 and len(a.replies) == 1
        relay.route_local([Msg("s", "0")])
        assert relay.pending_count == 2
        relay.route_local([Msg("s", "end", is_final=True)])
        assert [r.body for r in b.replies] == ["0", "end"] and relay.pending_count == 1
        relay.route_local([Msg("x", "lost")])
        assert relay.pending_count == 0 and relay.local_replies == 6
        assert len(observed) == 3 and all(seconds >= 0 for seconds in observed)  # u, s, x
    finally:
        relay.close()


def test_relay_starts_a_stream_only_for_a_streams_first_chunk(relay: Relay) -> None:
    """Steps: forward a unary request and two streams; ask which replies start a stream, before
    and after a chunk of one of them is routed. Expect True only while a reply belongs to a stream
    none of whose chunks was routed yet (its client is waiting for the first token)."""
    a = Collector("a")
    relay.forward(a, "u", request=Msg("u"))
    relay.forward(a, "s", request=Msg("s"), streaming=True)
    relay.forward(a, "t", request=Msg("t"), streaming=True)
    assert relay.starts_a_stream([Msg("s")])
    assert relay.starts_a_stream([Msg("u"), Msg("t")])
    assert not relay.starts_a_stream([Msg("u")])
    assert not relay.starts_a_stream([Msg("nobody"), Msg(["unhashable"])])
    relay.route_local([Msg("s")])
    assert not relay.starts_a_stream([Msg("s")])  # its first chunk is on its way
    assert relay.starts_a_stream([Msg("s"), Msg("t")])
