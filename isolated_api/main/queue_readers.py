"""Which relay of this process reads a response queue: the queue object itself says.

One reader per response queue: two relays on one queue would take each other's replies. While a
relay reads a queue it leaves a small handle on that very object (as it replaces the object's
``put``, local_put.py), so code that makes replies in this process (``ReplyBatcher``, the ``put``
the relay installs, an ``Engine`` meeting its server) finds it from the queue it already holds and
can hand replies to it instead of through the queue. No table keyed by ``id(queue)``: the handle
lives and dies with the queue, and the relay takes it off when it stops.

The handle never leaves this process: a queue pickled to a child arrives without it (its
``__reduce__`` rebuilds an empty one), so a relay is only ever found where it runs. A queue that
takes no attributes (``__slots__``, a C type such as ``queue.SimpleQueue``) is read all the same;
replies made in this process then cross it, and no second reader is refused.

``LocalReader`` is what those users need of the relay, so that none of them imports it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

_ATTRIBUTE = "_isolated_api_reader"
_lock = threading.Lock()


class LocalReader(Protocol):
    """The relay as code in its own process that makes replies sees it."""

    @property
    def is_closed(self) -> bool: ...

    @property
    def max_pending(self) -> int | None:
        """The server-wide bound on requests awaiting replies."""

    # Registers a Prometheus collector on the server's /metrics (None: the server has none).
    add_collector: Callable[[Any], None] | None
    dropped_count: int

    def answers_everything(self, replies: list[Any]) -> bool: ...

    def starts_a_stream(self, replies: list[Any]) -> bool: ...

    def route_local(self, replies: list[Any]) -> None: ...


class _Handle:
    """What a relay leaves on the queue it reads; pickled, it arrives empty."""

    __slots__ = ("reader",)

    def __init__(self, reader: LocalReader | None) -> None:
        self.reader = reader

    def __reduce__(self) -> tuple[type[_Handle], tuple[None]]:
        return (_Handle, (None,))


def _handle(response_q: Any) -> _Handle | None:
    handle = getattr(response_q, _ATTRIBUTE, None)
    return handle if type(handle) is _Handle else None


def claim(response_q: Any, reader: LocalReader) -> None:
    """Marks ``reader`` as the reader of ``response_q``; RuntimeError if another one is."""
    with _lock:
        handle = _handle(response_q)
        if handle is not None and handle.reader is not None:
            raise RuntimeError("this response_q is already read by another running server or channel")
        try:
            setattr(response_q, _ATTRIBUTE, _Handle(reader))
        except (AttributeError, TypeError):
            pass  # a queue that takes no attributes: read without a handle (see above)


def release(response_q: Any, reader: LocalReader) -> None:
    with _lock:
        handle = _handle(response_q)
        if handle is not None and handle.reader is reader:
            delattr(response_q, _ATTRIBUTE)


def relay_reading(response_q: Any) -> LocalReader | None:
    """The running relay of this process that reads ``response_q``, if any: replies made in this
    process can then be handed to it directly (``route_local``) instead of crossing the queue."""
    handle = _handle(response_q)
    reader = None if handle is None else handle.reader
    if reader is None or reader.is_closed:
        return None
    return reader
