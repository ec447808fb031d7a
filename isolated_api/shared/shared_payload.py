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
                self._arena.write(offset, view)
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
    arena.write(offset, memoryview(data))
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
    unpickler: ``readinto`` fills the objects it builds straight from the slots (``preadv``)."""

    def __init__(self, inline: memoryview, segments: list[Segment], arena: Arena) -> None:
        # Each piece: a view of the in-band bytes, or (offset, length) in the arena.
        pieces: list[memoryview | tuple[int, int]] = []
        cursor = 0
        for at, _slot, offset, length in segments:
            if at > cursor:
                pieces.append(inline[cursor:at])
            pieces.append((offset, length))
            cursor = at
        if cursor < len(inline):
            pieces.append(inline[cursor:])
        self._arena = arena
        self._pieces = pieces
        self._index = 0
        self._offset = 0

    def _left(self, piece: memoryview | tuple[int, int]) -> int:
        return (piece[1] if type(piece) is tuple else len(piece)) - self._offset

    def _take(self, out: memoryview) -> None:
        # ``out`` fits in what is left of the current piece.
        piece = self._pieces[self._index]
        if isinstance(piece, tuple):
            self._arena.read_into(piece[0] + self._offset, out)
        else:
            out[:] = piece[self._offset : self._offset + len(out)]
        self._offset += len(out)
        if not self._left(piece):
            self._index += 1
            self._offset = 0

    def readinto(self, target: Any) -> int:
        out = memoryview(target).cast("B")
        filled = 0
        while filled < len(out) and self._index < len(self._pieces):
            taken = min(self._left(self._pieces[self._index]), len(out) - filled)
            self._take(out[filled : filled + taken])
            filled += taken
        return filled

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = sum(self._left(piece) + self._offset for piece in self._pieces[self._index :]) - self._offset
        if self._index < len(self._pieces):
            piece = self._pieces[self._index]
            if type(piece) is not tuple and len(piece) - self._offset >= size:  # the usual case
                data = bytes(piece[self._offset : self._offset + size])
                self._offset += size
                if self._offset == len(piece):
                    self._index += 1
                    self._offset = 0
                return data
        buffer = bytearray(size)
        return bytes(buffer[: self.readinto(buffer)])

    def readline(self) -> bytes:
        # Protocol 5 never needs it for what the pipes carry; kept correct, not fast.
        line = bytearray()
        byte = bytearray(1)
        while self.readinto(byte):
            line += byte
            if byte == b"\n":
                break
        return bytes(line)

    def release(self) -> None:
        for piece in self._pieces:
            if isinstance(piece, memoryview):
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
    if len(segments) == 1 and not len(inline):
        _at, _slot, offset, length = segments[0]
        return arena.read(offset, length)
    total = len(inline) + sum(segment[3] for segment in segments)
    buffer = bytearray(total)
    pieces = _Pieces(inline, segments, arena)
    try:
        pieces.readinto(buffer)
    finally:
        pieces.release()
    return bytes(buffer)


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
