"""Is the main process reading ``request_q``? What waits there unread, and since when nothing was read.

Readiness asks whether the main process *reads* ``request_q``, not whether it answers quickly: a
loop serving one long generation is busy, not stuck, and one working through a backlog is
reading. The relay is the queue's writer, and the queue counts what it holds (``qsize()``: for a
``multiprocessing.Queue`` the value of its semaphore, which each ``get()`` in any process gives
back). So the relay notes when it put each message, and on demand (a readiness probe, a pong):
- the newest ``qsize()`` notes are the unread messages, the queue being first in, first out;
- puts minus ``qsize()`` is how many were read: while that number stays the same from one look
  to the next, nothing was read in between (``quiet_age``: since the first look that saw it).
Nothing runs between looks: an idle server costs no CPU here. A read is seen at the first look
after it, so a loop that stops reading is seen at the second look after it stopped.

Assumes the relay is the queue's only writer: a message someone else puts counts as one of the
relay's. A queue that cannot count (``multiprocessing.SimpleQueue``, ``Queue.qsize()`` on macOS,
any object with only ``put``/``get``) answers None, and readiness falls back to judging replies.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Below this many notes, no put asks the queue for its size (looks trim the notes anyway).
_TRIM_FLOOR = 1024


@dataclass(frozen=True, slots=True)
class Unread:
    """Messages the relay put that surely wait unread, the oldest one's age, and for how long
    surely nothing at all was read (seconds)."""

    count: int
    oldest_age: float
    quiet_age: float


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
        self._noted = 0
        # Puts under way: in qsize() or not yet, so not counted as unread for sure.
        self._putting = 0
        self._trim_at = _TRIM_FLOOR
        # How many were read at the last look, and the first look that saw that many.
        self._reads = 0
        self._reads_since = time.monotonic()

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
            self._noted += 1
            if len(self._put_at) >= self._trim_at:
                # Amortised: the notes at most double between two sizes asked while nobody looks.
                self._look(now)
                self._trim_at = max(_TRIM_FLOOR, 2 * len(self._put_at))

    def unread(self) -> Unread | None:
        """What waits unread now; None if the queue can't count."""
        if self._qsize is None:
            return None
        now = time.monotonic()
        with self._lock:
            size = self._look(now)
            if size is None:
                return None
            quiet = now - self._reads_since
            # A put under way may already be in the size but not yet noted: not surely unread.
            count = min(len(self._put_at), max(0, size - self._putting))
            if count == 0:
                return Unread(0, 0.0, quiet)
            return Unread(count, now - self._put_at[len(self._put_at) - count], quiet)

    def _look(self, now: float) -> int | None:
        # With the lock held.
        assert self._qsize is not None
        try:
            size = self._qsize()
        except (NotImplementedError, OSError, ValueError):
            return None
        notes = self._put_at
        while len(notes) > size:  # first in, first out: all but the newest ``size`` were read
            notes.popleft()
        # Any change counts as a read. A put under way (in the size, not yet noted) passes for
        # one, which errs towards ready; so does someone else's put, though one that comes with
        # a read between two looks hides it (hence: the relay is to be the only writer).
        reads = self._noted - size
        if reads != self._reads:
            self._reads, self._reads_since = reads, now
        return size
