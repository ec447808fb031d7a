"""The HTTP child's end of its pipes, over real pipes on a real event loop: when a request is
written to the main process, and that closing the link still writes what was queued."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import select
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from isolated_api.shared.codecs import PickleCodec
from isolated_api.shared.errors import IPCError
from isolated_api.shared.framing import FrameDecoder, Kind, split_request
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
            what = body if kind is Kind.CANCEL else split_request(body, PickleCodec().decode_id)[0]
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


def _raw_frames(fd: int, decoder: FrameDecoder) -> list[tuple[Kind, bytes]]:
    frames: list[tuple[Kind, bytes]] = []
    while select.select([fd], [], [], 0)[0]:
        data = os.read(fd, 1 << 16)
        if not data:  # end of file: the link closed its end
            break
        frames += decoder.feed(data)
    return frames
