"""The HTTP child's end of its private pipes, driven by the child's event loop.

The uplink is an asyncio pipe transport: writing buffers instead of blocking. The downlink is read
by a ``DownlinkReader`` on the same loop (``downlink.py``); end-of-file there means the main
process is gone.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable, Hashable
from multiprocessing.connection import Connection
from typing import Any

from isolated_api.shared import control, errors, shared_payload
from isolated_api.shared.arena import Arena, SlotAllocator
from isolated_api.shared.codecs import Codec, PickleCodec, encode_parts
from isolated_api.shared.config import DEFAULT_MAX_MESSAGE_SIZE
from isolated_api.shared.framing import (
    HEADER_SIZE,
    SIZED_FRAME,
    Body,
    Kind,
    frame,
    request_frame,
    request_frame_head,
)
from isolated_api.shared.link import LinkSink
from isolated_api.worker.downlink import DownlinkReader
from isolated_api.worker.request_origin import current_origin
from isolated_api.worker.uplink_writer import UplinkWriter


class _Uplink(asyncio.BaseProtocol):
    def __init__(self, link: PipeLink) -> None:
        self._link = link

    def connection_lost(self, exc: Exception | None) -> None:
        self._link.lost("the main process stopped reading the IPC link")


class PipeLink:
    def __init__(
        self,
        uplink: Connection,
        downlink: Connection,
        *,
        on_drain: Callable[[float], None] = lambda timeout: None,
        on_lost: Callable[[str], None] = lambda reason: None,
        codec: Codec | None = None,
        busy_wait: float = 0.0,
        max_frame: int = DEFAULT_MAX_MESSAGE_SIZE,
        arena: Arena | None = None,
        shared_min_size: int = 0,
    ) -> None:
        self.codec: Codec = codec or PickleCodec()
        # Shared payloads: requests go into the arena's up region, which only this worker writes.
        self.arena = arena
        self._shared_min_size = shared_min_size
        self._requests = SlotAllocator(arena, arena.up, 0) if arena is not None else None
        # The main process treats a larger frame as a protocol fault and kills this worker with
        # every request it holds: a request that would pass it is refused here, before writing.
        self._max_frame = max_frame
        # Seconds to check the downlink for the reply after a lone request (with_reply_busy_wait).
        self._busy_wait = busy_wait
        self._reply_ready: select.poll | None = None
        self._uplink = uplink
        self._downlink = downlink
        self.on_drain = on_drain
        self._on_lost = on_lost
        self._sink: LinkSink | None = None
        self._writer: UplinkWriter | None = None
        self._reader: DownlinkReader | None = None
        self._lost = False
        self._probe_seq = 0
        self._outbox: list[bytes] = []
        self._probes: dict[int, asyncio.Future[Any]] = {}

    async def open(self, sink: LinkSink) -> None:
        loop = asyncio.get_running_loop()
        self._sink = sink
        transport, _ = await loop.connect_write_pipe(lambda: _Uplink(self), self._uplink)
        self._writer = UplinkWriter(transport, self._uplink.fileno(), self.lost)
        self._reader = DownlinkReader(self, sink, self._downlink)
        self._reader.start()
        if self._busy_wait > 0:
            self._reply_ready = select.poll()
            self._reply_ready.register(self._downlink.fileno(), select.POLLIN)

    def send(self, request_id: Hashable, request: Any, *, streaming: bool) -> None:
        if self._writer is None or self._lost:
            raise errors.ChannelClosedError("the IPC link to the main process is closed")
        kind = Kind.STREAM_REQUEST if streaming else Kind.REQUEST
        codec = self.codec
        if self._requests is not None:
            assert self.arena is not None
            encoded = shared_payload.encode(codec, request, None, self.arena, self._requests, self._shared_min_size)
            if isinstance(encoded, shared_payload.Encoded):
                self._send_shared(streaming, request_id, encoded)
                return
            pieces: list[Body] = [encoded]
        else:
            # A large buffer in the request (an upload's bytes) stays a piece of its own,
            # written from where it is, never copied into a joined pickle (encode_parts).
            pieces = encode_parts(codec, request)
        size = sum(len(piece) for piece in pieces) if len(pieces) > 1 else len(pieces[0])
        if size < SIZED_FRAME:
            # Small: one joined frame, the cheapest to build and to write with others.
            payload = pieces[0] if len(pieces) == 1 and type(pieces[0]) is bytes else b"".join(pieces)
            data = request_frame(kind, request_id, current_origin(), payload, codec.encode_id)
            self._check_size(len(data) - HEADER_SIZE)
        else:
            self._send_large(kind, request_id, pieces, size)
            return
        if not self._outbox and self._sink is not None and self._sink.pending_count == 0:
            # Nothing else awaits the main process, so no other request is likely to share this
            # write: it leaves now instead of after the loop's turn, and the main process starts
            # on it while this handler is still suspending (1 connection: see README, Performance).
            self._writer.write(data)
            if self._reply_ready is not None:
                self._await_reply_busily()
            return
        self._write(data)

    def _check_size(self, size: int) -> None:
        if size > self._max_frame:
            raise errors.MessageTooLargeError(
                f"the request is {size} bytes once encoded, over max_message_size "
                f"({self._max_frame} bytes), the largest a worker may send to the main process"
            )

    def _send_large(self, kind: Kind, request_id: Hashable, pieces: list[Body], size: int) -> None:
        head = request_frame_head(kind, request_id, current_origin(), size, self.codec.encode_id)
        self._check_size(len(head) - HEADER_SIZE + size)
        # The payload is never copied into a joined frame. What this turn queued goes first, so
        # frames keep their order.
        assert self._writer is not None
        self._flush()
        self._writer.writelines([head, *pieces])

    def _send_shared(self, streaming: bool, request_id: Hashable, encoded: shared_payload.Encoded) -> None:
        kind = Kind.SHARED_STREAM_REQUEST if streaming else Kind.SHARED_REQUEST
        head = request_frame_head(kind, request_id, current_origin(), encoded.size, self.codec.encode_id)
        try:
            self._check_size(len(head) - HEADER_SIZE + encoded.size)
        except errors.MessageTooLargeError:
            assert self.arena is not None
            shared_payload.free_slots(self.arena, encoded.slots)
            raise
        assert self._writer is not None
        self._flush()  # what this turn queued goes first, so frames keep their order
        small = [part for part in encoded.parts if len(part) < SIZED_FRAME]
        if len(small) == len(encoded.parts):
            self._writer.write(b"".join((head, encoded.head, *encoded.parts)))
            return
        self._writer.writelines([head + encoded.head, *encoded.parts])

    def _await_reply_busily(self) -> None:
        # Opt-in (with_reply_busy_wait): an event loop that sleeps until the reply comes leaves
        # its CPU idle, and on a VM waking an idle CPU costs tens of microseconds, with caches
        # gone cold. Checked here, the reply is read in the loop's next turn without a sleep.
        # Bounded, and only for a request with nothing else pending (one client at a time).
        assert self._reply_ready is not None
        poll = self._reply_ready.poll
        deadline = time.perf_counter() + self._busy_wait
        while not poll(0) and time.perf_counter() < deadline:
            pass

    def _write(self, data: bytes) -> None:
        # Frames written in one loop iteration leave in one write: under load, one syscall and
        # one wake-up of the relay for many requests instead of one each.
        if not self._outbox:
            try:
                asyncio.get_running_loop().call_soon(self._flush)
            except RuntimeError:  # no running loop (a stream collected at shutdown): write now
                if self._writer is not None and not self._lost:
                    self._writer.write(data)
                return
        self._outbox.append(data)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if outbox and self._writer is not None and not self._lost:
            self._writer.write(b"".join(outbox) if len(outbox) > 1 else outbox[0])

    def cancel(self, request_id: Hashable, reason: str = "cancelled") -> None:
        if self._writer is not None and not self._lost:
            data = frame(Kind.CANCEL, control.encode_cancel(request_id, reason, self.codec.encode_id))
            if self._writer.holds_large:
                # Never ahead of the request's own frame, which may be that one, still in parts.
                self._flush()
                self._writer.write(data, may_pass=False)
            else:
                self._write(data)

    async def probe(self, timeout: float) -> dict[str, Any] | None:
        """Asks the main process's relay for its facts; None if it doesn't answer in time.
        Travels on the private pipe, never on request_q: health checks don't queue behind work."""
        facts: dict[str, Any] | None = await self.ask("facts", timeout)
        return facts

    async def scrape(self, timeout: float = 5.0) -> bytes | None:
        """The server's metrics as Prometheus text, rendered by the main process."""
        text: bytes | None = await self.ask("metrics", timeout)
        return text

    def send_metrics(self, report: dict[str, Any]) -> None:
        if self._writer is not None and not self._lost:
            self._write(frame(Kind.METRICS, control.encode_metrics(report)))

    async def ask(self, what: str, timeout: float) -> Any:
        if self._writer is None or self._lost:
            return None
        self._probe_seq += 1
        token = self._probe_seq
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._probes[token] = future
        try:
            self._write(frame(Kind.PROBE, control.encode_probe(token, what)))
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            self._probes.pop(token, None)

    def on_pong(self, token: int, answer: Any) -> None:
        future = self._probes.get(token)
        if future is not None and not future.done():
            future.set_result(answer)

    def send_ready(self, info: dict[str, int]) -> None:
        """``info``: this worker's ``pid`` and ``port``."""
        if self._writer is not None and not self._lost:
            self._writer.write(frame(Kind.READY, control.encode_ready(info["pid"], info["port"])))

    def lost(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        if self._writer is not None:
            self._writer.discard()
        if self._sink is not None:
            self._sink.on_link_lost(reason)
        self._on_lost(reason)

    async def close(self) -> None:
        self._flush()  # what was queued this turn (the last metrics report) still leaves
        self._lost = True
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            self._reader.close()
        self._writer = None
        self._reader = None
