"""The HTTP child's end of its pipes, over real pipes on a real event loop: when a request is
written to the main process, that closing the link still writes what was queued, and the opt-in
busy wait for a lone request's reply."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from isolated_api.shared.codecs import PickleCodec
from isolated_api.shared.errors import IPCError
from isolated_api.shared.framing import FrameDecoder, Kind, frame, request_body, split_request
from isolated_api.worker.pipe_link import PipeLink


@dataclass
class Msg:
    id: str


class Sink:
    """What the channel would be: only ``pending_count`` matters here."""

    def __init__(self) -> None:
        self.pending_count = 0

    def on_replies(self, replies: list[Any]) -> None:
        pass

    def on_failure(self, request_id: Hashable, error: IPCError) -> None:
        pass

    def on_link_lost(self, reason: str) -> None:
        pass


def _sent_ids(fd: int, decoder: FrameDecoder) -> list[tuple[Kind, Hashable]]:
    """What the main process could read right now, without waiting."""
    sent: list[tuple[Kind, Hashable]] = []
    while select.select([fd], [], [], 0)[0]:
        for kind, body in decoder.feed(os.read(fd, 1 << 16)):
            what = bytes(body) if kind is Kind.CANCEL else split_request(body, PickleCodec().decode_id)[0]
            sent.append((kind, what))
    return sent


def test_pipe_link_writes_a_lone_request_at_once_and_collects_the_others_for_one_write() -> None:
    """Steps: send a request while it is the only one pending, then two while others are
    pending, then a lone one behind a queued cancel. Expect: the lone request readable before
    the loop turns; the others only after it, in order, the lone one behind the cancel too."""

    async def scenario() -> list[list[tuple[Kind, Hashable]]]:
        up_read, up_write = multiprocessing.Pipe(duplex=False)
        down_read, down_write = multiprocessing.Pipe(duplex=False)
        link = PipeLink(up_write, down_read)
        sink = Sink()
        await link.open(sink)
        fd, decoder = up_read.fileno(), FrameDecoder()
        seen: list[list[tuple[Kind, Hashable]]] = []
        try:
            sink.pending_count = 0  # the channel registers a request after sending it
            link.send("alone", Msg("alone"), streaming=False)
            seen.append(_sent_ids(fd, decoder))
            sink.pending_count = 2
            link.send("b", Msg("b"), streaming=False)
            link.send("c", Msg("c"), streaming=True)
            seen.append(_sent_ids(fd, decoder))
            await asyncio.sleep(0)  # the loop's turn: the collected frames leave in one write
            seen.append(_sent_ids(fd, decoder))
            link.cancel("b", "timeout")
            sink.pending_count = 0
            link.send("d", Msg("d"), streaming=False)  # must not overtake the cancel
            seen.append(_sent_ids(fd, decoder))
            await asyncio.sleep(0)
            seen.append(_sent_ids(fd, decoder))
        finally:
            await link.close()
            for conn in (up_read, down_write):
                conn.close()
        return seen

    alone, before_turn, after_turn, before_second_turn, after_second_turn = asyncio.run(scenario())
    assert alone == [(Kind.REQUEST, "alone")]
    assert before_turn == []
    assert after_turn == [(Kind.REQUEST, "b"), (Kind.STREAM_REQUEST, "c")]
    assert before_second_turn == []
    assert [kind for kind, _ in after_second_turn] == [Kind.CANCEL, Kind.REQUEST]
    assert after_second_turn[1] == (Kind.REQUEST, "d")


def test_pipe_link_close_writes_what_this_loop_turn_queued() -> None:
    """Steps: queue a metrics report and a cancel (both wait for the loop's turn), then close the
    link in the same turn. Expect both frames readable by the main process, in order, and nothing
    written twice once the loop turns."""

    async def scenario() -> tuple[list[Kind], list[Kind]]:
        up_read, up_write = multiprocessing.Pipe(duplex=False)
        down_read, down_write = multiprocessing.Pipe(duplex=False)
        link = PipeLink(up_write, down_read)
        await link.open(Sink())
        fd, decoder = up_read.fileno(), FrameDecoder()
        try:
            link.send_metrics({"http": [], "rejected": 1, "dropped": 0})
            link.cancel("a", "timeout")
            await link.close()
            at_close = (
                [kind for kind, _ in decoder.feed(os.read(fd, 1 << 16))] if select.select([fd], [], [], 5)[0] else []
            )
            await asyncio.sleep(0)  # the turn the frames were queued for
            later = [kind for kind, _ in _raw_frames(fd, decoder)]
        finally:
            for conn in (up_read, down_write):
                conn.close()
        return at_close, later

    at_close, later = asyncio.run(scenario())
    assert at_close == [Kind.METRICS, Kind.CANCEL]
    assert later == []


def _raw_frames(fd: int, decoder: FrameDecoder) -> list[tuple[Kind, bytes | bytearray]]:
    frames: list[tuple[Kind, bytes | bytearray]] = []
    while select.select([fd], [], [], 0)[0]:
        data = os.read(fd, 1 << 16)
        if not data:  # end of file: the link closed its end
            break
        frames += decoder.feed(data)
    return frames


def _answer_first_request(up_read: Any, down_write: Any, answered: threading.Event) -> None:
    """The main process's part: read one request frame, write a reply frame for it."""
    codec, decoder = PickleCodec(), FrameDecoder()
    frames: list[tuple[Kind, bytes | bytearray]] = []
    while not frames:
        frames = decoder.feed(os.read(up_read.fileno(), 1 << 16))
    request_id, _, _ = split_request(frames[0][1], codec.decode_id)
    reply = frame(Kind.REPLY, request_body(request_id, codec.encode(Msg(str(request_id))), codec.encode_id))
    os.write(down_write.fileno(), reply)
    answered.set()


def _busy_send(busy_wait: float, pending: int, answer: bool) -> tuple[bool, bool, float, int]:
    """Sends one request through a link with ``busy_wait`` while ``pending`` others are pending,
    a thread answering it when ``answer``. Returns whether the reply was readable when send()
    returned, whether the link watched for it, how long send() took, and the calls of the wait."""

    async def scenario() -> tuple[bool, bool, float, int]:
        up_read, up_write = multiprocessing.Pipe(duplex=False)
        down_read, down_write = multiprocessing.Pipe(duplex=False)
        link = PipeLink(up_write, down_read, busy_wait=busy_wait)
        sink = Sink()
        sink.pending_count = pending
        await link.open(sink)
        waits = 0
        wait = link._await_reply_busily

        def counted() -> None:
            nonlocal waits
            waits += 1
            wait()

        link._await_reply_busily = counted  # type: ignore[method-assign]
        answered = threading.Event()
        responder = threading.Thread(target=_answer_first_request, args=(up_read, down_write, answered), daemon=True)
        if answer:
            responder.start()
        try:
            started = time.perf_counter()
            link.send("r1", Msg("r1"), streaming=False)
            took = time.perf_counter() - started
            readable = bool(select.select([down_read.fileno()], [], [], 0)[0])
        finally:
            await link.close()
            if answer:
                responder.join(10)
            for conn in (up_read, down_write):
                conn.close()
        return readable, answered.is_set(), took, waits

    return asyncio.run(scenario())


def test_pipe_link_busy_wait_returns_once_a_lone_requests_reply_is_readable() -> None:
    """Steps: a link with a busy wait longer than the test (30 s), one request with nothing else
    pending, a thread standing in for the main process that reads it and writes the reply. Expect
    send() to return with the reply readable on the downlink, well before the bound."""
    readable, answered, took, waits = _busy_send(30.0, pending=0, answer=True)
    assert (readable, answered, waits) == (True, True, 1)
    assert took < 29.0


def test_pipe_link_busy_wait_is_bounded_when_no_reply_comes() -> None:
    """Steps: a busy wait of 0.05 s, a lone request nobody answers. Expect send() to return after
    at least the bound, with nothing to read."""
    readable, answered, took, waits = _busy_send(0.05, pending=0, answer=False)
    assert (readable, answered, waits) == (False, False, 1)
    assert took >= 0.05


def test_pipe_link_busy_wait_only_for_a_lone_request_and_only_when_asked() -> None:
    """Steps: a request sent while another is pending, with a busy wait; then a lone request with
    no busy wait (the default). Expect neither to wait: the loop keeps serving the other clients,
    and without the option nothing polls."""
    assert _busy_send(30.0, pending=1, answer=False)[3] == 0
    assert _busy_send(0.0, pending=0, answer=False)[3] == 0
