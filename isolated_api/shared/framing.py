"""Length-prefixed frames on the private pipes between the main process and one HTTP child.

A frame is a 5-byte header (body length, kind) and a body. The pipes belong to one child
incarnation only, so a child killed half-way through a frame can corrupt nothing but its own
pipe, which dies with it (DESIGN.md invariant 3).
"""

from __future__ import annotations

import copyreg
import io
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
    # main -> child
    REPLY = 5
    DRAIN = 6
    REJECT = 7
    PONG = 9
    REPLIES = 11  # several replies that came in one message (a list), with their ids


class _QueuePickler(pickle.Pickler):
    """Pickles as ``ForkingPickler`` (what multiprocessing queues use, so anything a user could put
    on a ``multiprocessing.Queue`` crosses our pipes too), about 2.5x faster for small messages:
    ``ForkingPickler.__init__`` copies the whole dispatch table for every message, this class
    holds one merged copy (kept by ``_refresh_dispatch_table``), brought up to date in place when
    a reducer is registered, so that picklers built before (one per thread, below) see it too."""


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


# One pickler and buffer per thread, reused: building a ``Pickler`` costs about 1 us, as much as
# pickling a small message. A call takes the thread's pair out while it works, so a __reduce__
# that itself calls dumps finds none and builds its own.
_local = threading.local()
# A buffer grown past this by a big message is dropped rather than kept for the thread's life.
_KEEP_BUFFER = 1 << 16


def _new_pair() -> tuple[pickle.Pickler, io.BytesIO]:
    buffer = io.BytesIO()
    return _QueuePickler(buffer, pickle.HIGHEST_PROTOCOL), buffer


def dumps(obj: Any) -> bytes:
    # Comparing two small dicts costs far less than ForkingPickler's copy of one.
    if _registered[1] != _EXTRA or _registered[0] != copyreg.dispatch_table:
        _refresh_dispatch_table()
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


def frame(kind: Kind, body: bytes) -> bytes:
    return _HEADER.pack(len(body), kind) + body


def request_body(request_id: Hashable, payload: bytes, encode_id: Callable[[Any], bytes] = dumps) -> bytes:
    """The id travels encoded apart from the request, so the main process can route the request
    without decoding it."""
    id_bytes = encode_id(request_id)
    return _ID_LEN.pack(len(id_bytes)) + id_bytes + payload


def split_request_body(body: bytes, decode_id: Callable[[bytes], Any] = loads) -> tuple[Hashable, bytes]:
    (id_len,) = _ID_LEN.unpack_from(body)
    start = _ID_LEN.size
    request_id: Hashable = decode_id(body[start : start + id_len])
    return request_id, body[start + id_len :]


def origin_text(method: str, path: str) -> bytes:
    """``b"GET /items/7"``, cut to ``MAX_ORIGIN`` bytes."""
    return f"{method} {path}".encode("utf-8", "replace")[:MAX_ORIGIN]


def request_frame(
    kind: Kind, request_id: Hashable, origin: bytes, payload: bytes, encode_id: Callable[[Any], bytes] = dumps
) -> bytes:
    """A REQUEST or STREAM_REQUEST frame: the id (routed without decoding the request), the
    origin, the payload. One header and two small slices more than a reply: ~0.2 us."""
    id_bytes = encode_id(request_id)
    head = _REQUEST_HEAD.pack(len(id_bytes), len(origin))
    length = _REQUEST_HEAD.size + len(id_bytes) + len(origin) + len(payload)
    return b"".join((_HEADER.pack(length, kind), head, id_bytes, origin, payload))


def split_request(body: bytes, decode_id: Callable[[bytes], Any] = loads) -> tuple[Hashable, str, bytes]:
    """(id, origin, payload) of a request frame's body; ``ProtocolError`` if its lengths lie."""
    try:
        id_len, origin_len = _REQUEST_HEAD.unpack_from(body)
    except struct.error:
        raise ProtocolError("a request frame shorter than its header") from None
    start = _REQUEST_HEAD.size
    end = start + id_len + origin_len
    if origin_len > MAX_ORIGIN or end > len(body):
        raise ProtocolError("a request frame whose lengths exceed its body")
    request_id: Hashable = decode_id(body[start : start + id_len])
    origin = body[start + id_len : end].decode("utf-8", "replace")
    return request_id, origin, body[end:]


# Kind(n) costs about 0.8 us (the enum's lookup machinery); a dict lookup, a tenth of that.
_KINDS: dict[int, Kind] = {kind.value: kind for kind in Kind}


class FrameDecoder:
    """Turns a byte stream into frames; keeps an incomplete tail for the next feed.

    ``max_frame``: the largest body accepted. A header claiming more raises ``FrameTooLarge`` as
    soon as it is read, before the body is buffered (an untrusted peer must not make the reader
    hold gigabytes waiting for a frame that was never meant to end). ``None``: no cap (the main
    process is the trusted side of a worker's pipes)."""

    def __init__(self, max_frame: int | None = None) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[tuple[Kind, bytes]]:
        # Usually nothing is left over from the last read: cut the frames straight out of
        # ``data`` (one copy each) and keep only an incomplete tail.
        buffer: bytes | bytearray = data
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        frames: list[tuple[Kind, bytes]] = []
        offset = 0
        end = len(buffer)
        while end - offset >= HEADER_SIZE:
            length, kind = _HEADER.unpack_from(buffer, offset)
            if kind not in _KINDS:
                raise ProtocolError(f"unknown frame kind {kind}")
            if self._max_frame is not None and length > self._max_frame:
                raise FrameTooLarge(f"a frame of {length} bytes, over the cap of {self._max_frame}")
            start = offset + HEADER_SIZE
            if end - start < length:
                break
            frames.append((_KINDS[kind], bytes(buffer[start : start + length])))
            offset = start + length
        if buffer is data:
            self._buffer += data[offset:]
        elif offset:
            del self._buffer[:offset]
        return frames

    @property
    def has_partial_frame(self) -> bool:
        return bool(self._buffer)
