"""Encoding a message so that its large buffers travel in the arena (``shared/arena.py``) and the
frame carries only their handles.

Why not ``buffer_callback`` alone: pickle's out-of-band buffers are ``PickleBuffer`` objects, and
the C pickler never asks a reducer about exact ``bytes`` (the usual body of an upload), so they
would stay in band. Instead this diverts the pickler's own large writes: with protocol 5 it hands
every ``bytes``, ``bytearray``, ``str`` or ``PickleBuffer`` (numpy arrays among them) of 64 KiB
or more to its file in a write of its own, and each such write of at least ``min_size`` is copied
into an arena slot instead of the stream. The frame then holds the rest of the stream and, for
each slot, where it splices in. The reader unpickles from a stream over those pieces, and the
unpickler reads every large ``bytes``/``bytearray`` straight from the slot into the object it
builds (``readinto``): one copy on each side, none on the pipes. The slot is freed as soon as the
message is decoded: nothing the user holds ever points into the arena, so a reused slot can't
change it. ``MsgspecCodec`` has no such hook: a whole encoded message of at least ``min_size``
travels in one slot, and is copied out into ``bytes`` before it is decoded.

A write the arena has no room for stays in the stream (the pipe), so a full arena only costs speed.

Wire form of a shared payload: ``!H`` count, then per slot ``!QHQQ`` (position in the stream,
slot, offset, length), then the stream's in-band bytes.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Hashable
from typing import Any

from isolated_api.shared.arena import FREE, Arena, SlotAllocator
from isolated_api.shared.codecs import Codec, CodecError, PickleCodec
from isolated_api.shared.framing import _DISPATCH_TABLE, ProtocolError

_COUNT = struct.Struct("!H")
_SEGMENT = struct.Struct("!QHQQ")
# The pickler writes a buffer apart from its frames from this size on (pickle's FRAME_SIZE_TARGET).
PICKLE_BYPASS = 64 * 1024

Segment = tuple[int, int, int, int]  # (position in the stream, slot, offset, length)


def _memoryview_from(data: Any) -> memoryview:
    return memoryview(data)


class _Pickler(pickle.Pickler):
    """Pickles as the pipes do (``framing._QueuePickler``'s reducers), plus contiguous
    memoryviews, which plain pickle refuses: one arrives as a memoryview of its own bytes."""

    dispatch_table = _DISPATCH_TABLE

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is memoryview and obj.c_contiguous:
            return (_memoryview_from, (pickle.PickleBuffer(obj),))
        return NotImplemented


class _ArenaSink:
    """The pickler's file: large writes to arena slots, the rest kept (as views) for the frame."""

    def __init__(self, arena: Arena, allocator: SlotAllocator, min_size: int) -> None:
        self._arena = arena
        self._allocator = allocator
        self._min_size = min_size
        self.parts: list[memoryview] = []
        self.inline = 0
        self.segments: list[Segment] = []

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        size = view.nbytes
        if size >= self._min_size:
            spot = self._allocator.allocate(size)
            if spot is not None:
                slot, offset = spot
                self._arena.view[offset : offset + size] = view
                self.segments.append((self.inline, slot, offset, size))
                return size
        self.parts.append(view)
        self.inline += size
        return size


class Encoded:
    """A message encoded for the arena: ``head`` (the slot table) and ``parts`` (the in-band
    stream) go on the pipe, in that order; ``slots`` are busy until the reader frees them."""

    __slots__ = ("head", "parts", "size", "slots")

    def __init__(self, segments: list[Segment], parts: list[memoryview], inline: int) -> None:
        self.head = _COUNT.pack(len(segments)) + b"".join(_SEGMENT.pack(*segment) for segment in segments)
        self.parts = parts
        self.size = len(self.head) + inline
        self.slots = [segment[1] for segment in segments]


def encode(
    codec: Codec,
    obj: Any,
    raw: bytes | bytearray | memoryview | None,
    arena: Arena,
    allocator: SlotAllocator,
    min_size: int,
) -> Encoded | bytes | bytearray | memoryview:
    """``obj`` (or ``raw``, its bytes already encoded) for the pipe: an ``Encoded`` when at least
    one buffer went to the arena, otherwise the plain encoded message."""
    if raw is None and type(codec) is PickleCodec:
        sink = _ArenaSink(arena, allocator, min_size)
        try:
            _Pickler(sink, pickle.HIGHEST_PROTOCOL).dump(obj)
        except Exception as exc:
            _free(arena, [segment[1] for segment in sink.segments])
            raise CodecError(f"{type(obj).__name__} could not be pickled: {exc}") from exc
        if not sink.segments:
            return b"".join(sink.parts)
        return Encoded(sink.segments, sink.parts, sink.inline)
    data = raw if raw is not None else codec.encode(obj)
    size = len(data)
    if size < min_size:
        return data
    spot = allocator.allocate(size)
    if spot is None:
        return data
    slot, offset = spot
    arena.view[offset : offset + size] = data
    return Encoded([(0, slot, offset, size)], [], 0)


def parse(payload: memoryview, arena: Arena, *, trusted: bool) -> tuple[list[Segment], memoryview]:
    """(segments, in-band stream) of a shared payload; ``ProtocolError`` for a malformed one or,
    unless ``trusted``, a handle outside the request region."""
    try:
        (count,) = _COUNT.unpack_from(payload)
        start = _COUNT.size
        end = start + count * _SEGMENT.size
        if end > len(payload):
            raise ProtocolError("a shared payload shorter than its slot table")
        segments = [_SEGMENT.unpack_from(payload, start + i * _SEGMENT.size) for i in range(count)]
    except struct.error:
        raise ProtocolError("a shared payload shorter than its header") from None
    inline = payload[end:]
    position = 0
    for at, slot, offset, length in segments:
        if at < position or at > len(inline):
            raise ProtocolError(f"a shared payload's slot {slot} splices in at {at}, out of order or past its end")
        position = at
        if not trusted:
            why = arena.check_up(slot, offset, length)
            if why is not None:
                raise ProtocolError(f"a forged shared-memory handle: {why}")
    return segments, inline


class _Pieces:
    """A read-only stream over the in-band bytes and the slots spliced into them, for the
    unpickler: ``readinto`` fills the objects it builds straight from the slots."""

    def __init__(self, inline: memoryview, segments: list[Segment], arena: Arena) -> None:
        pieces: list[memoryview] = []
        cursor = 0
        for at, _slot, offset, length in segments:
            if at > cursor:
                pieces.append(inline[cursor:at])
            pieces.append(arena.view[offset : offset + length])
            cursor = at
        if cursor < len(inline):
            pieces.append(inline[cursor:])
        self._pieces = pieces
        self._index = 0
        self._offset = 0

    def readinto(self, target: Any) -> int:
        out = memoryview(target).cast("B")
        filled = 0
        pieces = self._pieces
        while filled < len(out) and self._index < len(pieces):
            piece = pieces[self._index]
            taken = min(len(piece) - self._offset, len(out) - filled)
            out[filled : filled + taken] = piece[self._offset : self._offset + taken]
            filled += taken
            self._offset += taken
            if self._offset == len(piece):
                self._index += 1
                self._offset = 0
        return filled

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = sum(len(piece) for piece in self._pieces[self._index :]) - self._offset
        if self._index < len(self._pieces):
            piece = self._pieces[self._index]
            if len(piece) - self._offset >= size:  # the usual case: within one piece
                data = bytes(piece[self._offset : self._offset + size])
                self._offset += size
                if self._offset == len(piece):
                    self._index += 1
                    self._offset = 0
                return data
        buffer = bytearray(size)
        return bytes(buffer[: self.readinto(buffer)])

    def readline(self) -> bytes:
        line = bytearray()
        while self._index < len(self._pieces):
            piece = self._pieces[self._index]
            rest = piece[self._offset :]
            newline = bytes(rest).find(b"\n")
            if newline >= 0:
                line += rest[: newline + 1]
                self._offset += newline + 1
                return bytes(line)
            line += rest
            self._index += 1
            self._offset = 0
        return bytes(line)

    def release(self) -> None:
        for piece in self._pieces:
            piece.release()
        self._pieces = []


def decode(codec: Codec, segments: list[Segment], inline: memoryview, arena: Arena) -> Any:
    """The message, copied out of the arena; its slots are free once this returns (or raises)."""
    try:
        if type(codec) is PickleCodec:
            pieces = _Pieces(inline, segments, arena)
            try:
                return pickle.Unpickler(pieces).load()
            except Exception as exc:
                raise CodecError(f"a message could not be unpickled: {exc!r}") from exc
            finally:
                pieces.release()
        return codec.decode(join(segments, inline, arena))
    finally:
        _free(arena, [segment[1] for segment in segments])


def join(segments: list[Segment], inline: memoryview, arena: Arena) -> bytes:
    """The encoded message as one ``bytes`` (one copy of each piece); frees nothing."""
    parts: list[Any] = []
    cursor = 0
    for at, _slot, offset, length in segments:
        parts.append(inline[cursor:at])
        parts.append(arena.view[offset : offset + length])
        cursor = at
    parts.append(inline[cursor:])
    try:
        return b"".join(parts)
    finally:
        for part in parts:
            part.release()


def free(arena: Arena, segments: list[Segment]) -> None:
    _free(arena, [segment[1] for segment in segments])


def free_slots(arena: Arena, slots: list[int]) -> None:
    _free(arena, slots)


def _free(arena: Arena, slots: list[int]) -> None:
    if arena.closed:
        return
    for slot in slots:
        arena.set_state(slot, FREE)


def describe(request_id: Hashable, segments: list[Segment]) -> str:
    return f"{request_id!r}: {len(segments)} slot(s), {sum(s[3] for s in segments)} bytes"
