"""The HTTP worker's reading end of its downlink pipe: the replies and control frames the main
process sends, read on the worker's event loop (``add_reader``: reading never blocks it).

Not an asyncio pipe transport: that reads into a new 256 KiB ``bytes`` per read, which the frame
decoder then copies into the frame's buffer. Read here, the rest of a large reply goes straight into
the one buffer of its announced size (``FrameDecoder.unfilled``), and is decoded from a view of it.
End-of-file means the main process is gone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Hashable
from multiprocessing.connection import Connection
from typing import Any, Protocol, cast

from isolated_api.shared import errors, shared_payload
from isolated_api.shared.arena import Arena
from isolated_api.shared.codecs import Codec, CodecError, view_decoder
from isolated_api.shared.framing import Body, FrameReader, Kind, split_request_body
from isolated_api.shared.link import LinkSink

# As much as an asyncio pipe transport reads at once; a large frame's rest is read in one go.
_READ_SIZE = 1 << 18


class DownlinkOwner(Protocol):
    """What the reader reports to (the ``PipeLink``)."""

    codec: Codec
    arena: Arena | None
    on_drain: Callable[[float], None]

    def on_pong(self, token: int, answer: Any) -> None: ...

    def lost(self, reason: str) -> None: ...


class DownlinkReader:
    def __init__(self, link: DownlinkOwner, sink: LinkSink, downlink: Connection) -> None:
        self._link = link
        self._sink = sink
        self._conn = downlink
        self._fd = downlink.fileno()
        self._reader = FrameReader(self._fd, _READ_SIZE)
        self._decode = view_decoder(link.codec)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)

    def close(self) -> None:
        """Stops reading and closes the pipe's end; safe to call twice."""
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)
        self._conn.close()

    def _readable(self) -> None:
        try:
            count, frames = self._reader.read()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count, frames = 0, []
        if frames:
            self._dispatch(frames)
        if not count:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            self._link.lost("the main process closed the IPC link")

    def _dispatch(self, frames: list[tuple[Kind, bytes | bytearray]]) -> None:
        codec = self._link.codec
        decode = self._decode
        replies: list[Any] = []
        for kind, body in frames:
            if kind is Kind.REPLY:
                # The payload is a view of the frame read: decoded from where it lies.
                request_id, payload = split_request_body(body, codec.decode_id)
                try:
                    replies.append(decode(payload))
                except CodecError as exc:
                    self._sink.on_failure(request_id, errors.RemoteError(f"the reply could not be decoded: {exc}", 500))
                continue
            if kind is Kind.REPLIES:
                self._bundle(body, replies)
                continue
            if kind is Kind.SHARED_REPLY:
                self._shared(body, replies)
                continue
            data = body if type(body) is bytes else bytes(body)  # a control frame over SIZED_FRAME
            if kind is Kind.REJECT:
                request_id, name, message, status, headers = codec.decode_control(data)
                self._sink.on_failure(request_id, errors.from_wire(name, message, status, headers))
            elif kind is Kind.DRAIN:
                self._link.on_drain(codec.decode_control(data))
            elif kind is Kind.PONG:
                self._link.on_pong(*codec.decode_control(data))
        if replies:
            self._sink.on_replies(replies)

    def _shared(self, body: Body, replies: list[Any]) -> None:
        # Copied out of the arena into the reply's own objects, and the slots freed, here: the
        # reply the route gets never points into shared memory.
        request_id, payload = split_request_body(body, self._link.codec.decode_id)
        arena = self._link.arena
        try:
            if arena is None:
                raise CodecError("a shared-payload reply, but this worker has no arena")
            segments, inline = shared_payload.parse(payload, arena, trusted=True)
            replies.append(shared_payload.decode(self._link.codec, segments, inline, arena))
        except CodecError as exc:
            self._sink.on_failure(request_id, errors.RemoteError(f"the reply could not be decoded: {exc}", 500))

    def _bundle(self, body: Body, replies: list[Any]) -> None:
        ids, payload = split_request_body(body, self._link.codec.decode_control)
        try:
            bundle = self._decode(payload)
            if type(bundle) is not list:
                raise CodecError(f"expected a list of replies, got {type(bundle).__name__}")
            replies.extend(bundle)
        except CodecError as exc:
            message = f"the reply could not be decoded: {exc}"
            for request_id in cast(tuple[Hashable, ...], ids):
                self._sink.on_failure(request_id, errors.RemoteError(message, 500))
