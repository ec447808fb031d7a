"""How the relay reads ``response_q`` and writes ``request_q`` with as little work as possible.

The user's queues are usually ``multiprocessing.Queue``. Its ``put()`` hands the object to a
feeder thread that pickles and writes it; its ``get()`` reads bytes and unpickles them. For such a
queue the relay does the same steps itself, under the queue's own locks and bound semaphore, so
that a request a worker already pickled is written as is (no unpickle/pickle here, no feeder
thread hop), and a reply keeps its bytes next to the object (the relay unpickles it to learn its
id, but forwards the original bytes to the worker). These are private attributes of
``multiprocessing.queues.Queue`` (stable since Python 3.4); any other queue goes through its
public ``put``/``get``.
"""

from __future__ import annotations

import multiprocessing.queues
import queue
import select
from collections.abc import Callable
from typing import Any

from isolated_api.main import request_handoff
from isolated_api.main.request_handoff import HANDOFF_MIN
from isolated_api.main.shared_requests import SharedRequest
from isolated_api.shared.codecs import Codec, CodecError
from isolated_api.shared.framing import dumps, loads
from isolated_api.shared.messages import ErrorReply

_READ_PARTS = ("_rlock", "_recv_bytes", "_sem", "_poll", "_closed", "_reader")
_WRITE_PARTS = ("_wlock", "_writer", "_sem", "_closed")


def _has(q: Any, parts: tuple[str, ...]) -> bool:
    return type(q) is multiprocessing.queues.Queue and all(hasattr(q, name) for name in parts)


class _Prepickled:
    """A payload already pickled, for queues that pickle what they are given: only this small
    wrapper is pickled, and ``get()`` on the other side yields the user's object."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (loads, (self.payload,))


class RequestWriter:
    def __init__(self, q: Any, timeout: float, codec: Codec | None = None) -> None:
        self._q = q
        self._timeout = timeout
        # A binary codec (msgspec): the queue carries the encoded bytes, never a pickle of the
        # worker's data, so the main process decodes them with the codec alone.
        self._codec = codec if codec is not None and codec.binary else None
        self._direct = _has(q, _WRITE_PARTS) and q._wlock is not None
        self._simple = isinstance(q, multiprocessing.queues.SimpleQueue)
        self._pickles = isinstance(q, multiprocessing.queues.Queue | multiprocessing.queues.SimpleQueue)

    def put(self, obj: Any, payload: bytes | memoryview | None) -> None:
        """Puts ``obj`` (or the object ``payload`` pickles). Raises ``queue.Full`` if a bounded
        queue stays full for the timeout, ``ValueError``/``OSError`` if it is closed. ``payload``
        may be a view of the frame it came in: written from there when the queue carries pickles
        as they are; made ``bytes`` only where an object must hold it. A payload of
        ``HANDOFF_MIN`` bytes or more is not written at all: it waits here, and the queue carries
        a small ``HandedRequest`` that is the request where it is unpickled (request_handoff.py)."""
        q = self._q
        if type(obj) is SharedRequest:
            # Its buffers wait in an arena: the queue carries the small record (whose unpickling
            # is the request), and a queue that doesn't pickle gets the request itself.
            if not self._pickles:
                obj = obj.load()
        elif self._direct and payload is not None and len(payload) >= HANDOFF_MIN:
            self._put_handed(request_handoff.hold(payload, binary=self._codec is not None))
            return
        elif self._codec is not None:
            # The main loop receives the encoded bytes themselves (bytes() of bytes is no copy).
            obj = bytes(payload) if payload is not None else self._codec.encode(obj)
            payload = None
        if self._direct:
            self._write(payload if payload is not None else dumps(obj))
            return
        if payload is not None:
            obj = _Prepickled(bytes(payload)) if self._pickles else loads(payload)
        if self._simple:
            q.put(obj)
        else:
            q.put(obj, timeout=self._timeout)

    def _put_handed(self, handed: request_handoff.HandedRequest) -> None:
        try:
            self._write(dumps(handed))
        except BaseException:
            request_handoff.release(handed)
            raise

    def _write(self, data: bytes | memoryview) -> None:
        q = self._q
        if q._closed:
            raise ValueError("the request queue is closed")
        if not q._sem.acquire(True, self._timeout):
            raise queue.Full
        with q._wlock:
            q._writer.send_bytes(data)


# How long ``put_now`` waits for room in a full bounded queue. The relay empties ``response_q`` as
# fast as replies come, so one full for this long has no reader left (the server stopped, or the
# process reading it is stuck): waiting on would hang the main loop, or a batcher's writer, for ever.
PUT_TIMEOUT = 10.0  # seconds


def put_now(q: Any, obj: Any, timeout: float = PUT_TIMEOUT) -> bool:
    """Pickles ``obj`` and writes it into a ``multiprocessing.Queue`` from this thread, as the
    queue's feeder thread would: one thread wake-up less per message (for the main process, whose
    threads share one GIL, that is most of what a small message costs). False if ``q`` is not a
    queue this works on: use ``q.put(obj)`` then. Messages put this way and by ``q.put`` from the
    same thread may overtake each other, so keep one way per stream of messages.

    A bounded queue still full after ``timeout`` seconds raises ``queue.Full`` and ``obj`` is not
    written: the callers (``ReplyBatcher``, the ``Engine``) log it and go on, and the requests it
    answered end as timeouts (504) in their workers."""
    if not _has(q, _WRITE_PARTS) or q._wlock is None:
        return False
    if q._closed:
        raise ValueError("the queue is closed")
    data = dumps(obj)
    if not q._sem.acquire(True, timeout):
        raise queue.Full(f"the queue stayed full for {timeout:g} s: nothing reads it")
    with q._wlock:
        q._writer.send_bytes(data)
    return True


def decode_reply(codec: Codec | None, item: Any) -> tuple[Any, bytes | None]:
    """What the main process put, as a reply and the bytes to forward: with a binary codec it
    puts encoded bytes (or, for convenience, objects, which are encoded on the way to the
    worker). Raises ``CodecError`` for bytes whose request can't even be named."""
    if codec is None or not codec.binary or not isinstance(item, bytes):
        return item, None
    try:
        return codec.decode(item), item
    except CodecError as exc:
        request_id = codec.find_id(item)
        if request_id is None:
            raise
        # Its id is readable: that one request fails with the reason instead of timing out.
        return ErrorReply(request_id, f"the reply could not be decoded: {exc}", 500), None


class ReplyReader:
    """Returns each reply with the bytes to forward to the worker (None: encode it again)."""

    def __init__(self, q: Any, codec: Codec | None = None) -> None:
        self._q = q
        self._codec = codec if codec is not None and codec.binary else None
        self._raw = _has(q, _READ_PARTS) and self._codec is None
        # Queue.get_nowait() asks "is a message waiting?" by building a selector for every call;
        # one poll object kept for the queue's pipe answers the same for a fraction of the cost.
        self._ready: Callable[[], bool] = getattr(q, "_poll", lambda: False)
        if self._raw and hasattr(select, "poll"):
            poller = select.poll()
            poller.register(q._reader.fileno(), select.POLLIN)
            self._ready = lambda: bool(poller.poll(0))

    def _decoded(self, item: Any) -> tuple[Any, bytes | None]:
        return decode_reply(self._codec, item)

    def get(self) -> tuple[Any, bytes | None]:
        q = self._q
        if not self._raw:
            item = q.get()
            return self._decoded(item) if self._codec is not None else (item, None)
        if q._closed:
            raise ValueError("the response queue is closed")
        with q._rlock:
            raw = q._recv_bytes()
        q._sem.release()
        return loads(raw), raw

    def get_nowait(self) -> tuple[Any, bytes | None]:
        q = self._q
        if not self._raw:
            item = q.get_nowait()
            return self._decoded(item) if self._codec is not None else (item, None)
        if not q._rlock.acquire(False):
            raise queue.Empty
        try:
            if not self._ready():
                raise queue.Empty
            raw = q._recv_bytes()
            q._sem.release()
        finally:
            q._rlock.release()
        return loads(raw), raw
