"""Length-prefixed frames on the private pipes between the main process and one HTTP child.

A frame is a 5-byte header (body length, kind) and a body. The pipes belong to one child
incarnation only, so a child killed half-way through a frame can corrupt nothing but its own
pipe, which dies with it (DESIGN.md invariant 3).

A frame of ``SIZED_FRAME`` bytes or more is *announced*: a BEGIN frame gives its length and kind,
and its body follows in PART frames of at most ``PART_SIZE`` (``Announced``). Small frames may go
between the parts, so a small request or reply never waits for a 16 MiB one to cross the pipe
(head-of-line). At most one announced frame is under way on a pipe at a time, and the reader
gathers it into one buffer of its size (``FrameDecoder``), where it is delivered when its last
part arrives. Writers let only small frames pass one, and never a frame that must stay behind it
(another reply of the same request, a cancel).
"""

from __future__ import annotations

import collections
import copyreg
import io
import os
import pickle
import struct
import threading
from collections.abc import Callable, Hashable
from enum import IntEnum
from multiprocessing.reduction import ForkingPickler
from typing import Any

_HEADER = struct.Struct("!IB")
_ID_LEN = struct.Struct("!I")
# A request's id and origin lengths: the origin ("GET /items/{id}") is what the main process logs
# when the worker it came from dies with it in flight.
_REQUEST_HEAD = struct.Struct("!IH")
HEADER_SIZE = _HEADER.size
# What an origin may take in a request frame; longer paths are cut (it is only logged).
MAX_ORIGIN = 200


class ProtocolError(ValueError):
    """A peer sent bytes that break the frame protocol (unknown kind, a frame over the cap, a
    malformed body): nothing more it sends can be trusted."""


class FrameTooLarge(ProtocolError):
    """A frame header claimed more bytes than the reader accepts: refused before buffering any."""


class Kind(IntEnum):
    # child -> main
    REQUEST = 1
    STREAM_REQUEST = 2
    CANCEL = 3
    READY = 4
    PROBE = 8
    METRICS = 10
    # A request whose large buffers wait in the worker's arena (shared_payload.py)
    SHARED_REQUEST = 12
    SHARED_STREAM_REQUEST = 13
    # main -> child
    REPLY = 5
    DRAIN = 6
    REJECT = 7
    PONG = 9
    REPLIES = 11  # several replies that came in one message (a list), with their ids
    SHARED_REPLY = 14  # a reply whose large buffers wait in the arena
    # either way: a large frame announced (its length and kind), then its body in parts
    BEGIN = 15
    PART = 16


class _QueuePickler(pickle.Pickler):
    """Pickles as ``ForkingPickler`` (what multiprocessing queues use, so anything a user could put
    on a ``multiprocessing.Queue`` crosses our pipes too), faster for small messages
    (docs/performance.md, "Figures behind the code"): ``ForkingPickler.__init__`` copies the whole
    dispatch table for every message, this class holds one merged copy (kept by
    ``_refresh_dispatch_table``), brought up to date in place when a reducer is registered, so that
    picklers built before (one per thread, below) see it too."""


_DISPATCH_TABLE: dict[Any, Any] = {}
_QueuePickler.dispatch_table = _DISPATCH_TABLE


_registered: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})


# ForkingPickler's own registry of reducers (sockets, connections...); private but stable.
_EXTRA: dict[Any, Any] = getattr(ForkingPickler, "_extra_reducers", {})


def _refresh_dispatch_table() -> None:
    global _registered
    standard, extra = dict(copyreg.dispatch_table), dict(_EXTRA)
    merged = {**standard, **extra}
    # In place: each pickler holds the table it was built with.
    _DISPATCH_TABLE.update(merged)
    for gone in [key for key in _DISPATCH_TABLE if key not in merged]:
        del _DISPATCH_TABLE[gone]
    _registered = (standard, extra)


_refresh_dispatch_table()


# One pickler and buffer per thread, reused: building a ``Pickler`` costs as much as pickling a
# small message (docs/performance.md, "Figures behind the code"). A call takes the thread's pair
# out while it works, so a __reduce__ that itself calls dumps finds none and builds its own.
_local = threading.local()
# A buffer grown past this by a big message is dropped rather than kept for the thread's life.
_KEEP_BUFFER = 1 << 16


def _new_pair() -> tuple[pickle.Pickler, io.BytesIO]:
    buffer = io.BytesIO()
    return _QueuePickler(buffer, pickle.HIGHEST_PROTOCOL), buffer


def _keep_dispatch_table_current() -> None:
    # Comparing two small dicts costs far less than ForkingPickler's copy of one.
    if _registered[1] != _EXTRA or _registered[0] != copyreg.dispatch_table:
        _refresh_dispatch_table()


def dumps(obj: Any) -> bytes:
    _keep_dispatch_table_current()
    spare: dict[str, tuple[pickle.Pickler, io.BytesIO]] = _local.__dict__
    pair = spare.pop("pair", None) or _new_pair()
    pickler, buffer = pair
    try:
        pickler.dump(obj)
        return buffer.getvalue()
    finally:
        # The memo holds what was pickled: cleared now, so nothing outlives this call.
        pickler.clear_memo()
        if buffer.tell() <= _KEEP_BUFFER:
            buffer.seek(0)
            buffer.truncate()
            spare["pair"] = pair


loads = pickle.loads

# What a frame's body may be handed on as: the bytes read, or a view of them (no copy).
Body = bytes | bytearray | memoryview


class _Parts:
    """The pickler's file in ``dumps_parts``: keeps each piece it is given, by reference."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[Body] = []

    def write(self, data: Body) -> int:
        # Only bytes are kept by reference: a bytearray or an array's buffer (pickle hands those
        # over as they are too) may be changed by its owner before the pipe has taken it all (a
        # loop that reuses one output buffer), so it is copied now, as a joined pickle would.
        self.parts.append(data if type(data) is bytes else bytes(data))
        return len(data)


def dumps_parts(obj: Any) -> list[Body]:
    """``dumps(obj)`` as the pieces the pickler wrote, in order: their join is ``dumps(obj)``. A
    ``bytes`` of 64 KiB or more in ``obj`` is one of the pieces itself, not copied (pickle streams
    such buffers to its file as they are, from protocol 4; a mutable one is copied, see
    ``_Parts``). Written one after another (``os.writev``), a 16 MiB image crosses without the copy
    and the fresh 16 MiB allocation a joined pickle costs (about 10 ms on a VM, most of it page
    faults). A small message is one piece, at the cost of ``dumps``."""
    _keep_dispatch_table_current()
    spare: dict[str, tuple[pickle.Pickler, _Parts]] = _local.__dict__
    pair = spare.pop("parts", None)
    if pair is None:
        sink = _Parts()
        pair = (_QueuePickler(sink, pickle.HIGHEST_PROTOCOL), sink)
    pickler, sink = pair
    try:
        pickler.dump(obj)
        return sink.parts
    finally:
        pickler.clear_memo()
        sink.parts = []
        spare["parts"] = pair


def frame(kind: Kind, body: Body) -> bytes:
    return _HEADER.pack(len(body), kind) + body


def request_body_head(request_id: Hashable, encode_id: Callable[[Any], bytes] = dumps) -> bytes:
    """What ``request_body`` puts before the payload: written apart from it, the payload is never
    copied into a joined frame."""
    id_bytes = encode_id(request_id)
    return _ID_LEN.pack(len(id_bytes)) + id_bytes


def request_body(request_id: Hashable, payload: Body, encode_id: Callable[[Any], bytes] = dumps) -> bytes:
    """The id travels encoded apart from the request, so the main process can route the request
    without decoding it."""
    return request_body_head(request_id, encode_id) + payload


def frame_head(kind: Kind, head: bytes, payload_size: int) -> bytes:
    """The header of a frame whose body is ``head`` then a payload written after it."""
    return _HEADER.pack(len(head) + payload_size, kind) + head


def split_request_body(body: Body, decode_id: Callable[[bytes], Any] = loads) -> tuple[Hashable, memoryview]:
    """(id, payload); the payload is a view of ``body``, not a copy."""
    (id_len,) = _ID_LEN.unpack_from(body)
    start = _ID_LEN.size
    request_id: Hashable = decode_id(bytes(body[start : start + id_len]))
    return request_id, memoryview(body)[start + id_len :]


def origin_text(method: str, path: str) -> bytes:
    """``b"GET /items/7"``, cut to ``MAX_ORIGIN`` bytes."""
    return f"{method} {path}".encode("utf-8", "replace")[:MAX_ORIGIN]


def request_frame_head(
    kind: Kind, request_id: Hashable, origin: bytes, payload_size: int, encode_id: Callable[[Any], bytes] = dumps
) -> bytes:
    """Everything of a REQUEST or STREAM_REQUEST frame before its payload."""
    id_bytes = encode_id(request_id)
    head = _REQUEST_HEAD.pack(len(id_bytes), len(origin))
    length = _REQUEST_HEAD.size + len(id_bytes) + len(origin) + payload_size
    return b"".join((_HEADER.pack(length, kind), head, id_bytes, origin))


def request_frame(
    kind: Kind, request_id: Hashable, origin: bytes, payload: bytes, encode_id: Callable[[Any], bytes] = dumps
) -> bytes:
    """A REQUEST or STREAM_REQUEST frame: the id (routed without decoding the request), the
    origin, the payload: one header and two small slices more than a reply."""
    return request_frame_head(kind, request_id, origin, len(payload), encode_id) + payload


def split_request(body: Body, decode_id: Callable[[bytes], Any] = loads) -> tuple[Hashable, str, memoryview]:
    """(id, origin, payload) of a request frame's body; ``ProtocolError`` if its lengths lie. The
    payload is a view of ``body``, not a copy."""
    try:
        id_len, origin_len = _REQUEST_HEAD.unpack_from(body)
    except struct.error:
        raise ProtocolError("a request frame shorter than its header") from None
    start = _REQUEST_HEAD.size
    end = start + id_len + origin_len
    if origin_len > MAX_ORIGIN or end > len(body):
        raise ProtocolError("a request frame whose lengths exceed its body")
    request_id: Hashable = decode_id(bytes(body[start : start + id_len]))
    origin = bytes(body[start + id_len : end]).decode("utf-8", "replace")
    return request_id, origin, memoryview(body)[end:]


# Kind(n) goes through the enum's lookup machinery; a dict lookup is much cheaper
# (docs/performance.md, "Figures behind the code").
_KINDS: dict[int, Kind] = {kind.value: kind for kind in Kind}
# A frame body at least this large is gathered into one buffer of its announced size, allocated
# once, instead of growing a buffer read by read and cutting the body out of it (three copies);
# and it is announced, so that small frames may pass it.
SIZED_FRAME = 1 << 16
# The largest part of an announced frame: what a small frame may wait for behind one. Half the
# private pipes' size (pipe_size.py); a reader copies at most one read (64 KiB) of each part
# instead of reading it in place, so larger parts would copy less, and make small frames wait more.
PART_SIZE = 1 << 19
_BEGIN_BODY = _HEADER.size


class Announced:
    """A frame of ``SIZED_FRAME`` bytes or more as it is written: a BEGIN frame, then PART frames
    of at most ``PART_SIZE``, cut from the caller's buffers as views (never joined, never copied;
    they must not change until written). A writer takes ``next_unit()`` until ``done``, writing
    each unit whole, and may write small frames between units."""

    __slots__ = ("_begin", "_left", "_views", "wire_size")

    def __init__(self, kind: Kind, body: list[Body]) -> None:
        self._views = collections.deque(memoryview(part).cast("B") for part in body if len(part))
        self._left = sum(len(view) for view in self._views)
        self._begin: bytes | None = frame(Kind.BEGIN, _HEADER.pack(self._left, kind))
        parts = -(-self._left // PART_SIZE)
        # Every byte this frame puts on the pipe.
        self.wire_size = len(self._begin) + parts * HEADER_SIZE + self._left

    @classmethod
    def of_frame(cls, parts: list[Body]) -> Announced:
        """From a frame written as pieces, the first starting with its header."""
        length, kind = _HEADER.unpack_from(parts[0])
        body = [memoryview(parts[0])[HEADER_SIZE:], *parts[1:]]
        announced = cls(_KINDS[kind], body)
        assert announced._left == length, "the pieces do not add up to the frame's header"
        return announced

    @property
    def done(self) -> bool:
        return self._begin is None and not self._left

    @property
    def unsent(self) -> int:
        """The bytes ``next_unit`` has still to give."""
        begin = len(self._begin) if self._begin is not None else 0
        return begin + -(-self._left // PART_SIZE) * HEADER_SIZE + self._left

    def next_unit(self) -> list[Body]:
        """The next bytes to write whole: the BEGIN frame with the first part, or the next part."""
        unit: list[Body] = []
        if self._begin is not None:
            unit.append(self._begin)
            self._begin = None
        size = min(PART_SIZE, self._left)
        if not size:
            return unit
        unit.append(_HEADER.pack(size, Kind.PART))
        views = self._views
        need = size
        while need:
            view = views[0]
            if len(view) <= need:
                unit.append(view)
                views.popleft()
                need -= len(view)
            else:
                unit.append(view[:need])
                views[0] = view[need:]
                need = 0
        self._left -= size
        return unit


class FrameDecoder:
    """Turns a byte stream into frames; keeps an incomplete tail for the next feed.

    ``max_frame``: the largest body accepted. A header (or an announcement) claiming more raises
    ``FrameTooLarge`` as soon as it is read, before the body is buffered (an untrusted peer must
    not make the reader hold gigabytes waiting for a frame that was never meant to end). ``None``:
    no cap (the main process is the trusted side of a worker's pipes).

    A body of ``SIZED_FRAME`` bytes or more, announced or sent whole, goes into a ``bytearray`` of
    its size: what ``feed`` is given is copied into it once, and a reader with a descriptor can
    skip that copy too, reading straight into ``unfilled()`` (the rest of the part or body now
    arriving) and reporting with ``filled``. Such a body is handed on as that ``bytearray``,
    when its last byte arrives; smaller ones as ``bytes``. Frames that come between an announced
    frame's parts are handed on as they arrive, before it."""

    def __init__(self, max_frame: int | None = None) -> None:
        # An incomplete header, or an incomplete body under SIZED_FRAME with its header.
        self._buffer = bytearray()
        self._max_frame = max_frame
        # The large body being gathered, its kind, the bytes of it filled, and where the bytes
        # now arriving (the rest of a whole frame, or of a part) end: _filled between parts.
        self._sized: bytearray | None = None
        self._sized_kind = Kind.REPLY
        self._filled = 0
        self._part_end = 0
        self._announced = False

    def _header(self, data: bytes | bytearray | memoryview, offset: int) -> tuple[int, Kind]:
        length, kind = _HEADER.unpack_from(data, offset)
        if kind not in _KINDS:
            raise ProtocolError(f"unknown frame kind {kind}")
        if self._max_frame is not None and length > self._max_frame:
            raise FrameTooLarge(f"a frame of {length} bytes, over the cap of {self._max_frame}")
        if kind == Kind.BEGIN and length != _BEGIN_BODY:
            raise ProtocolError(f"a BEGIN frame of {length} bytes, not {_BEGIN_BODY}")
        return length, _KINDS[kind]

    def unfilled(self) -> memoryview | None:
        """The rest of the large body's bytes now arriving, for a reader to fill in place."""
        if self._sized is None or self._filled == self._part_end:
            return None
        return memoryview(self._sized)[self._filled : self._part_end]

    def filled(self, count: int) -> list[tuple[Kind, bytes | bytearray]]:
        """``count`` bytes were written into ``unfilled()``: the frame, once it is whole."""
        assert self._sized is not None and self._filled + count <= self._part_end
        self._filled += count
        return self._completed()

    def _completed(self) -> list[tuple[Kind, bytes | bytearray]]:
        sized = self._sized
        if sized is None or self._filled < len(sized):
            return []
        self._sized = None
        self._announced = False
        return [(self._sized_kind, sized)]

    def _start_sized(self, kind: Kind, length: int, announced: bool) -> None:
        if self._sized is not None:
            raise ProtocolError("a large frame begun while an announced one is still arriving")
        self._sized = bytearray(length)
        self._sized_kind = kind
        self._filled = 0
        self._part_end = 0 if announced else length
        self._announced = announced

    def _start_part(self, length: int) -> None:
        if not self._announced or self._sized is None:
            raise ProtocolError("a PART frame with no large frame announced")
        if not length or self._filled + length > len(self._sized):
            raise ProtocolError(f"a PART frame of {length} bytes, past the end of the frame announced")
        self._part_end = self._filled + length

    def _whole(self, kind: Kind, body: Body, frames: list[tuple[Kind, bytes | bytearray]]) -> None:
        if kind is not Kind.BEGIN:
            if len(body) >= SIZED_FRAME and self._sized is not None:
                # Whichever way the reads cut it, not only when it came in one.
                raise ProtocolError("a large frame sent whole while an announced one is still arriving")
            frames.append((kind, bytes(body)))
            return
        length, inner = _HEADER.unpack_from(body)
        if inner not in _KINDS or inner in (Kind.BEGIN, Kind.PART):
            raise ProtocolError(f"a BEGIN frame announcing a frame of kind {inner}")
        if self._max_frame is not None and length > self._max_frame:
            raise FrameTooLarge(f"a frame of {length} bytes announced, over the cap of {self._max_frame}")
        if length < SIZED_FRAME:
            raise ProtocolError(f"a BEGIN frame announcing {length} bytes, under the {SIZED_FRAME} announced")
        self._start_sized(_KINDS[inner], length, announced=True)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[Kind, bytes | bytearray]]:
        frames: list[tuple[Kind, bytes | bytearray]] = []
        with memoryview(data) as view:
            offset = 0
            end = len(view)
            while offset < end:
                sized = self._sized
                if sized is not None and self._filled < self._part_end:
                    taken = min(self._part_end - self._filled, end - offset)
                    sized[self._filled : self._filled + taken] = view[offset : offset + taken]
                    self._filled += taken
                    offset += taken
                    frames += self._completed()
                    continue
                if self._buffer:
                    offset = self._continue(view, offset, frames)
                    continue
                # Usually nothing is left over from the last read: cut the frames straight out
                # of ``data`` (one copy each) and keep only an incomplete tail.
                if end - offset < HEADER_SIZE:
                    self._buffer += view[offset:]
                    break
                length, kind = self._header(view, offset)
                start = offset + HEADER_SIZE
                if kind is Kind.PART:
                    self._start_part(length)
                    offset = start
                elif end - start >= length:
                    self._whole(kind, view[start : start + length], frames)
                    offset = start + length
                elif length >= SIZED_FRAME:
                    self._start_sized(kind, length, announced=False)
                    offset = start
                else:
                    self._buffer += view[offset:]
                    break
        return frames

    def _continue(self, view: memoryview, offset: int, frames: list[tuple[Kind, bytes | bytearray]]) -> int:
        """Completes, from ``view[offset:]``, the header or small frame an earlier feed left in
        the buffer; returns the offset where what follows it starts."""
        buffer = self._buffer
        if len(buffer) < HEADER_SIZE:
            taken = min(HEADER_SIZE - len(buffer), len(view) - offset)
            buffer += view[offset : offset + taken]
            offset += taken
            if len(buffer) < HEADER_SIZE:
                return offset
            length, kind = self._header(buffer, 0)
            if kind is Kind.PART or length >= SIZED_FRAME:
                buffer.clear()
                if kind is Kind.PART:
                    self._start_part(length)
                else:
                    self._start_sized(kind, length, announced=False)
                return offset
        else:
            length, kind = self._header(buffer, 0)
        taken = min(HEADER_SIZE + length - len(buffer), len(view) - offset)
        buffer += view[offset : offset + taken]
        offset += taken
        if len(buffer) == HEADER_SIZE + length:
            with memoryview(buffer) as held:
                body = bytes(held[HEADER_SIZE:])
            buffer.clear()
            self._whole(kind, body, frames)
        return offset

    @property
    def has_partial_frame(self) -> bool:
        return bool(self._buffer) or self._sized is not None

    @property
    def between_parts(self) -> bool:
        """An announced frame is under way and nothing else is half-read: the next bytes are a
        frame's header, likely its next part's."""
        return self._announced and self._filled == self._part_end and not self._buffer


class FrameReader:
    """Reads one pipe's frames with as few copies as it can: into a buffer of its own, reused for
    every read (``os.read`` would allocate one each time), and the rest of a large body or part
    straight into the decoder's buffer for it. Between an announced frame's parts it first reads
    only a header: when that is the next part's, the part is read in place instead of half of it
    being copied out of the read buffer."""

    def __init__(self, fd: int, read_size: int, max_frame: int | None = None) -> None:
        self.decoder = FrameDecoder(max_frame)
        self._fd = fd
        self._scratch = bytearray(read_size)
        self._probe = True

    def read(self) -> tuple[int, list[tuple[Kind, bytes | bytearray]]]:
        """One read: the bytes read (0 at end-of-file) and the frames it completed. Raises what
        ``os.readv`` raises (``BlockingIOError`` on a non-blocking pipe with nothing to read), and
        ``ProtocolError``."""
        decoder = self.decoder
        unfilled = decoder.unfilled()
        if unfilled is not None:
            try:
                count = os.readv(self._fd, [unfilled])
            finally:
                unfilled.release()
            return count, decoder.filled(count) if count else []
        size = HEADER_SIZE if self._probe and decoder.between_parts else len(self._scratch)
        with memoryview(self._scratch) as scratch:
            count = os.readv(self._fd, [scratch[:size]])
            frames = decoder.feed(scratch[:count]) if count else []
        if decoder.unfilled() is not None:
            self._probe = True  # once this body or part is in, look for the next part's header
        elif size == HEADER_SIZE:
            self._probe = False  # not a part: small frames came between, read on as usual
        return count, frames
