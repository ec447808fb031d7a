"""How long has the oldest request the relay put on ``request_q`` waited unread?

Readiness asks whether the main process *reads* ``request_q``, not whether it answers quickly: a
loop serving one long generation is busy, not stuck. The relay is the queue's writer, and the
queue counts what it holds (``qsize()``: for a ``multiprocessing.Queue`` the value of its
semaphore, which each ``get()`` in any process gives back). So the relay notes when it put each
message, and on demand (a readiness probe, a pong) the last ``qsize()`` of those are the unread
ones, the queue being first in, first out. Nothing runs between probes: an idle server costs no
CPU here.

Assumes the relay is the queue's only writer: a message someone else puts counts as one of the
relay's. A queue that cannot count (``multiprocessing.SimpleQueue``, ``Queue.qsize()`` on macOS,
any object with only ``put``/``get``) answers None, and readiness falls back to judging replies.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

# Below this many notes, no put asks the queue for its size (probes trim the notes anyway).
_TRIM_FLOOR = 1024


def _counter(q: Any) -> Callable[[], int] | None:
    qsize = getattr(q, "qsize", None)
    if not callable(qsize):
        return None
    try:
        size = qsize()
    except (NotImplementedError, OSError, ValueError):  # macOS has no sem_getvalue
        return None
    return qsize if isinstance(size, int) and not isinstance(size, bool) else None


class UnreadWatch:
    def __init__(self, q: Any) -> None:
        self._qsize = _counter(q)
        self._lock = threading.Lock()
        # When each message the relay put (and that may still be unread) went in, oldest first.
        self._put_at: deque[float] = deque()
        # Puts under way: in qsize() or not yet, so not counted as unread for sure.
        self._putting = 0
        self._trim_at = _TRIM_FLOOR

    @property
    def counts(self) -> bool:
        """False when the queue can't say how much it holds."""
        return self._qsize is not None

    def starting(self) -> None:
        with self._lock:
            self._putting += 1

    def failed(self) -> None:
        with self._lock:
            self._putting -= 1

    def done(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._putting -= 1
            if self._qsize is None:
                return
            self._put_at.append(now)
            if len(self._put_at) >= self._trim_at:
                # Amortised: the notes at most double between two sizes asked while no probe trims.
                self._trim()
                self._trim_at = max(_TRIM_FLOOR, 2 * len(self._put_at))

    def unread(self) -> tuple[int, float] | None:
        """``(count, age of the oldest)`` of the relay's messages surely still unread (``(0, 0.0)``:
        none), or None if the queue can't count."""
        if self._qsize is None:
            return None
        now = time.monotonic()
        with self._lock:
            size = self._trim()
            if size is None:
                return None
            # A put under way may already be in the size but not yet noted: not surely unread.
            count = min(len(self._put_at), max(0, size - self._putting))
            if count == 0:
                return 0, 0.0
            return count, now - self._put_at[len(self._put_at) - count]

    def _trim(self) -> int | None:
        # With the lock held. First in, first out: all but the newest ``size`` notes were read.
        assert self._qsize is not None
        try:
            size = self._qsize()
        except (NotImplementedError, OSError, ValueError):
            return None
        notes = self._put_at
        while len(notes) > size:
            notes.popleft()
        return size
