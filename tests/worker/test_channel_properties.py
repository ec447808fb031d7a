"""Property tests of IPCChannel's registry: random mixes of unary and streaming requests, random
reply interleavings (duplicates, unknown ids, replies after timeouts and cancellations), random
cancellations, link failures, all driven through a fake link on one event loop.

Design: the event loop runs on a virtual clock (time moves only when every task waits, by exactly
the next timer's delay), so timeouts are deterministic and a 50 s timeout costs nothing. A small
model beside the channel predicts, at each delivery, whether the reply has a waiter; the channel's
own ``dropped_count`` must agree with it at the end. The model reads only what the test's own
tasks recorded (what they were given, whether they exited), never the channel's internals.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isolated_api.shared.config import IPCConfig
from isolated_api.shared.errors import (
    ChannelClosedError,
    IPCTimeoutError,
    OverloadedError,
    RemoteError,
    StreamOverflowError,
)
from isolated_api.shared.link import LinkSink
from isolated_api.shared.messages import ErrorReply
from isolated_api.testing import run_virtual
from isolated_api.worker.channel import IPCChannel
from isolated_api.worker.chunk_stream import ChunkStream
from isolated_api.worker.text_merge import merge_text

# -- messages and the fake link ------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    id: str


@dataclass(frozen=True)
class Answer:
    id: str
    text: str


@dataclass(frozen=True)
class Chunk:
    id: str
    index: int
    text: str
    is_final: bool = False


class FakeLink:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.channel: IPCChannel | None = None
        self.sink: LinkSink | None = None
        self.sent: list[Hashable] = []
        self.cancelled: list[Hashable] = []
        self.reasons: dict[Hashable, str] = {}

    async def open(self, sink: LinkSink) -> None:
        self.sink = sink

    def send(self, request_id: Hashable, request: Any, *, streaming: bool) -> None:
        assert self.channel is not None
        # Admitted requests, this one included, never exceed max_pending.
        assert self.channel.pending_count <= self.max_pending
        self.sent.append(request_id)

    def cancel(self, request_id: Hashable, reason: str = "cancelled") -> None:
        self.cancelled.append(request_id)
        self.reasons[request_id] = reason

    async def close(self) -> None:
        self.sink = None


# -- the scenario --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    streaming: bool
    chunks: int
    timeout: float
    buffer: int
    merge: bool
    abandon_after: int | None
    error_at: int | None
    slow: bool


@dataclass
class Track:
    """One request, as the test sees it."""

    id: str
    spec: Spec
    replies: list[Any]
    admitted: bool = False
    delivered: int = 0  # how many of ``replies`` were put on the link
    terminal: bool = False  # its last reply reached its waiter: the entry left
    severed: bool = False  # failed, overflowed or lost: the entry left without its last reply
    exited: bool = False  # the task finished (its registry entry is gone by then)
    cancel_requested: bool = False
    deadline: float | None = None  # when the current wait times out, in loop time
    expect_cancel: bool = False  # the channel must tell the link to forget this id
    raced: bool = False  # a unary reply landed in the iteration of its timeout
    appended: int = 0  # chunks the model expects in the stream's buffer, ever (merges excluded)
    consumed: int = 0  # chunks the consumer took
    got: list[Any] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def registered(self) -> bool:
        return self.admitted and not (self.terminal or self.severed or self.exited)

    def settle(self, outcome: str) -> None:
        assert not self.outcomes, f"{self.id} settled twice: {self.outcomes} then {outcome}"
        # Leaving while still registered (timeout, cancel, abandon): the route must be forgotten.
        self.expect_cancel = self.expect_cancel or self.registered
        self.outcomes.append(outcome)
        self.exited = True


def replies_for(request_id: str, spec: Spec) -> list[Any]:
    if not spec.streaming:
        if spec.error_at == 0:
            return [ErrorReply(request_id, "refused", 418)]
        return [Answer(request_id, f"answer-{request_id}")]
    out: list[Any] = []
    for index in range(spec.chunks):
        if spec.error_at == index:
            out.append(ErrorReply(request_id, "engine failed", 502))
            break
        out.append(Chunk(request_id, index, f"{request_id}.{index} ", is_final=index == spec.chunks - 1))
    return out


async def run_unary(channel: IPCChannel, track: Track, max_pending: int) -> None:
    # Admission is decided synchronously inside submit(), right after this: predict it from
    # what is visible now.
    track.admitted = channel.is_open and channel.pending_count < max_pending
    track.deadline = asyncio.get_running_loop().time() + track.spec.timeout
    try:
        reply = await channel.submit(Ask(track.id), timeout=track.spec.timeout)
    except OverloadedError:
        track.settle("overloaded")
    except ChannelClosedError:
        track.settle("closed")
    except IPCTimeoutError:
        track.settle("timeout")
    except RemoteError as exc:
        assert exc.status_code in (418, 502)
        track.settle("error")
    except asyncio.CancelledError:
        track.settle("cancelled")
    else:
        assert reply == track.replies[0], f"{track.id} got {reply!r}"
        track.got.append(reply)
        track.settle("reply")


async def run_stream(stream: ChunkStream, track: Track) -> None:
    spec = track.spec
    outcome = "complete"
    loop = asyncio.get_running_loop()
    try:
        while True:
            # The stream starts its idle clock in this same step if it has to wait.
            track.deadline = loop.time() + spec.timeout
            try:
                chunk = await anext(stream)
            except StopAsyncIteration:
                break
            track.consumed += 1
            track.got.append(chunk)
            if spec.abandon_after is not None and len(track.got) >= spec.abandon_after:
                outcome = "abandoned"
                break
            if spec.slow:
                await asyncio.sleep(0.5)
    except IPCTimeoutError:
        outcome = "timeout"
    except StreamOverflowError:
        outcome = "overflow"
    except RemoteError as exc:
        assert exc.status_code == 502
        outcome = "error"
    except ChannelClosedError:
        outcome = "closed"
    except asyncio.CancelledError:
        outcome = "cancelled"
    finally:
        # A well-behaved consumer (sse_response is one) closes the stream whatever happened.
        await stream.aclose()
        track.settle(outcome)


spec_strategy = st.builds(
    Spec,
    streaming=st.booleans(),
    chunks=st.integers(1, 6),
    timeout=st.sampled_from([1.0, 3.0, 50.0]),
    buffer=st.integers(1, 4),
    merge=st.booleans(),
    abandon_after=st.none() | st.integers(1, 4),
    error_at=st.none() | st.none() | st.integers(0, 5),
    slow=st.booleans(),
)
target = st.integers(0, 30)
reply_kind = st.sampled_from(["next", "next", "next", "dup", "unknown"])
op_strategy = st.one_of(
    st.tuples(st.just("submit"), spec_strategy),
    st.tuples(st.just("submit"), spec_strategy),
    st.tuples(
        st.just("deliver"),
        st.lists(st.tuples(target, reply_kind), min_size=1, max_size=8),
    ),
    # A burst for one request: what fills a slow consumer's buffer.
    st.tuples(st.just("burst"), target, st.integers(2, 6)),
    st.tuples(st.just("deliver_then_cancel"), target),
    st.tuples(st.just("cancel_then_deliver"), target),
    # Timeout racing a reply: time jumps to the request's deadline and its reply lands right then.
    st.tuples(st.just("race"), target),
    st.tuples(st.just("cancel"), target),
    st.tuples(st.just("fail"), target),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 2.0, 10.0])),
)


class Scenario:
    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.link = FakeLink(max_pending)
        self.channel = IPCChannel(config=IPCConfig(max_pending=max_pending), link=self.link)
        self.link.channel = self.channel
        self.tracks: list[Track] = []
        self.expected_dropped = 0
        self.unknown = 0
        self.lost = False
        self.racing = False

    def pick(self, index: int) -> Track | None:
        return self.tracks[index % len(self.tracks)] if self.tracks else None

    def submit(self, spec: Spec) -> None:
        channel = self.channel
        request_id = f"r{len(self.tracks)}"
        track = Track(request_id, spec, replies_for(request_id, spec))
        self.tracks.append(track)
        if not spec.streaming:
            track.task = asyncio.ensure_future(run_unary(channel, track, self.max_pending))
            return
        # Admission is decided synchronously, from what is visible right now.
        track.admitted = channel.is_open and channel.pending_count < self.max_pending
        try:
            stream = channel.submit_streaming(
                Ask(request_id), timeout=spec.timeout, buffer_size=spec.buffer, merge=merge_text if spec.merge else None
            )
        except OverloadedError:
            assert not track.admitted
            track.settle("overloaded")
            return
        except ChannelClosedError:
            assert not track.admitted
            track.settle("closed")
            return
        assert track.admitted
        track.task = asyncio.ensure_future(run_stream(stream, track))

    def deliver(self, picks: list[tuple[int, str]]) -> None:
        batch: list[Any] = []
        for index, kind in picks:
            track = self.pick(index)
            if track is None or kind == "unknown":
                self.unknown += 1
                batch.append(Answer(f"unknown{self.unknown}", "?"))
                self.expected_dropped += 1
                continue
            if kind == "dup" and track.delivered < len(track.replies):
                kind = "next"  # a duplicate mid-stream would be a broken engine, not a late reply
            if kind == "next" and track.delivered < len(track.replies):
                reply = track.replies[track.delivered]
                track.delivered += 1
            else:
                reply = track.replies[-1]
            batch.append(reply)
            self.predict(track, reply, is_last=reply is track.replies[-1] and kind == "next")
        self.channel.on_replies(batch)

    def predict(self, track: Track, reply: Any, *, is_last: bool) -> None:
        if not track.registered:
            self.expected_dropped += 1
            return
        if not track.spec.streaming:
            assert track.deadline is not None
            now = asyncio.get_running_loop().time()
            if self.racing and now == track.deadline and not track.cancel_requested:
                # Reply and timeout in one iteration: taken if it came first (the request then
                # returns it), dropped if the timeout came first (the request then times out).
                track.raced = True
                track.terminal = True
                return
            if track.cancel_requested or now >= track.deadline:
                # Its task was cancelled (by us or its timeout, whose timer has fired by now) but
                # has not run yet: nobody will take the reply; the entry leaves, the reply is dropped.
                self.expected_dropped += 1
                track.severed = True
                return
            track.terminal = True
            return
        buffered = track.appended - track.consumed
        if buffered < track.spec.buffer or type(reply) is ErrorReply:
            track.appended += 1
        elif not track.spec.merge:
            self.expected_dropped += 1  # the overflowing chunk
            track.severed = True
            track.expect_cancel = True
            return
        if is_last:
            track.terminal = True

    async def race(self, index: int) -> None:
        track = self.pick(index)
        loop = asyncio.get_running_loop()
        if track is None or track.deadline is None or track.deadline <= loop.time():
            self.deliver([(index, "next")])
            return
        # Timeout racing a reply: the reply lands in the very loop iteration whose timer expires
        # the request, before or after the timeout's own callback (the heap decides).
        deadline = track.deadline

        def land() -> None:
            self.racing = True
            try:
                self.deliver([(index, "next")])
            finally:
                self.racing = False

        loop.call_at(deadline, land)
        await asyncio.sleep(deadline - loop.time())

    def cancel(self, track: Track | None) -> None:
        if track is None or track.task is None or track.task.done():
            return
        track.cancel_requested = True
        track.task.cancel()

    def fail(self, track: Track | None) -> None:
        if track is None:
            return
        if track.registered:
            track.severed = True
        else:
            self.expected_dropped += 1
        self.channel.on_failure(track.id, RemoteError("main side failed it", 502))

    def check_instant(self) -> None:
        assert 0 <= self.channel.pending_count <= self.max_pending
        assert self.channel.pending_count == sum(1 for t in self.tracks if t.registered)

    def check_end(self) -> None:
        channel = self.channel
        assert channel.pending_count == 0
        for track in self.tracks:
            assert len(track.outcomes) == 1, f"{track.id} settled {track.outcomes}"
            outcome = track.outcomes[0]
            if not track.admitted:
                assert outcome in ("overloaded", "closed") and not track.got
            assert (outcome == "overloaded") == (not track.admitted and outcome != "closed")
            # Every reply reached the waiter for its id and no other, and a stream kept its order.
            assert all(item.id == track.id for item in track.got)
            if track.spec.streaming:
                self.check_order(track, outcome)
            elif track.raced:
                assert outcome in ("reply", "error", "timeout"), f"{track.id}: {outcome}"
                self.expected_dropped += outcome == "timeout"
            elif track.terminal:  # its reply reached its waiter before any cancellation
                assert outcome in ("reply", "error", "cancelled"), f"{track.id}: {outcome}"
        assert channel.dropped_count == self.expected_dropped
        assert channel.rejected_count == sum(1 for t in self.tracks if t.outcomes == ["overloaded"])
        cancelled = self.link.cancelled
        assert len(cancelled) == len(set(cancelled)), "an id was cancelled twice"
        assert set(cancelled) == {t.id for t in self.tracks if t.expect_cancel}
        for track in self.tracks:
            if track.id in self.link.reasons:
                timed_out = track.outcomes == ["timeout"] and not track.severed
                assert self.link.reasons[track.id] == ("timeout" if timed_out else "cancelled"), track

    def check_order(self, track: Track, outcome: str) -> None:
        expected = [r for r in track.replies if type(r) is Chunk]
        indices = [c.index for c in track.got]
        assert indices == sorted(set(indices)), f"{track.id} out of order: {indices}"
        text = "".join(c.text for c in track.got)
        prefix = "".join(c.text for c in expected[: indices[-1] + 1]) if indices else ""
        assert text == prefix, f"{track.id} lost or reordered text"
        if not track.spec.merge:
            assert indices == list(range(len(indices)))
        # A stream that ended by itself left nothing behind: every chunk its waiter took, the
        # consumer got (an ErrorReply is taken but raised, not yielded).
        if outcome in ("complete", "timeout", "overflow", "closed"):
            assert track.consumed == track.appended, f"{track.id} ended {outcome} with chunks left unread"
        elif outcome == "error":
            assert track.appended - track.consumed in (0, 1)
        if outcome == "complete":
            assert track.got[-1].is_final and indices[-1] == len(track.replies) - 1

    async def run(self, ops: list[Any], lose_at: int | None) -> None:
        await self.channel.start_polling()
        for number, op in enumerate(ops):
            if number == lose_at:
                self.lost = True
                for track in self.tracks:
                    if track.registered:
                        track.severed = True
                self.channel.on_link_lost("main process gone")
            kind = op[0]
            if kind == "submit":
                self.submit(op[1])
            elif kind == "deliver":
                self.deliver(op[1])
            elif kind == "burst":
                streams = [i for i, t in enumerate(self.tracks) if t.spec.streaming]
                if streams:
                    self.deliver([(streams[op[1] % len(streams)], "next")] * op[2])
            elif kind == "deliver_then_cancel":
                # Cancellation while a reply is arriving: no task runs between the two.
                self.deliver([(op[1], "next")])
                self.cancel(self.pick(op[1]))
            elif kind == "cancel_then_deliver":
                # A reply landing after its waiter was cancelled, before the task ran again.
                self.cancel(self.pick(op[1]))
                self.deliver([(op[1], "next")])
            elif kind == "race":
                await self.race(op[1])
            elif kind == "cancel":
                self.cancel(self.pick(op[1]))
            elif kind == "fail":
                self.fail(self.pick(op[1]))
            elif kind == "advance":
                await asyncio.sleep(op[1])
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            self.check_instant()
        # The main process answers everything still owed, late or not; then time runs out for the rest.
        for index, track in enumerate(self.tracks):
            while track.delivered < len(track.replies):
                self.deliver([(index, "next")])
                await asyncio.sleep(0)
                self.check_instant()
        tasks = [t.task for t in self.tracks if t.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        self.check_end()
        await self.channel.stop_polling()


profile = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)


@profile
@given(
    max_pending=st.integers(1, 5),
    ops=st.lists(op_strategy, min_size=4, max_size=40),
    lose_at=st.none() | st.none() | st.none() | st.integers(0, 15),
)
def test_channel_properties_replies_settle_once_in_order_and_pending_returns_to_zero(
    max_pending: int, ops: list[Any], lose_at: int | None
) -> None:
    """Invariants: every reply reaches the waiter for its id and no other; each stream keeps its
    order; every request settles exactly once; admitted <= max_pending at every instant and
    admission refuses exactly when full; pending returns to 0; ``dropped_count`` equals the
    replies that had no waiter; no id is cancelled twice or after its last reply."""
    run_virtual(Scenario(max_pending).run(ops, lose_at))


@profile
@given(
    chunks=st.lists(st.text(min_size=0, max_size=3), min_size=1, max_size=30),
    buffer=st.integers(1, 5),
    batches=st.lists(st.integers(1, 10), min_size=1, max_size=30),
)
def test_channel_properties_merged_stream_keeps_every_token(chunks: list[str], buffer: int, batches: list[int]) -> None:
    """A token stream with merge_text and a tiny buffer, fed in random batch sizes against a
    consumer that reads one chunk per step: the client's text is the engine's text, whole and in
    order, and nothing is dropped."""

    async def go() -> None:
        link = FakeLink(1)
        channel = IPCChannel(config=IPCConfig(max_pending=1), link=link)
        link.channel = channel
        await channel.start_polling()
        stream = channel.submit_streaming(Ask("s"), buffer_size=buffer, merge=merge_text)
        replies = [Chunk("s", i, text, is_final=i == len(chunks) - 1) for i, text in enumerate(chunks)]
        got: list[Chunk] = []

        async def consume() -> None:
            async for chunk in stream:
                got.append(chunk)
                await asyncio.sleep(0)

        task = asyncio.ensure_future(consume())
        sizes = iter(batches)
        while replies:
            size = next(sizes, len(replies))
            batch, replies = replies[:size], replies[size:]
            assert link.sink is not None
            link.sink.on_replies(list(batch))
            await asyncio.sleep(0)
        await task
        assert "".join(c.text for c in got) == "".join(chunks)
        assert got[-1].is_final and channel.dropped_count == 0 and channel.pending_count == 0

    run_virtual(go())
