"""Timeouts for unary requests with one loop timer per distinct timeout, not one per request.

Why: an event-loop timer per request (``call_later`` when it is sent, ``cancel`` when its reply
comes) was the largest single line of the channel in a profile of the HTTP child under load
(on uvloop, timers are libuv handles allocated, started, stopped and closed each time; figures:
docs/performance.md, "Figures behind the code"). Requests given the same timeout expire in the
order they were sent, so each timeout keeps a FIFO of deadlines and one timer, armed for the
oldest deadline still awaited.

A reply does not look for its entry: the request marks it finished (``Deadline.cancel``) and the
entry is skipped when it reaches the front. So that finished entries cannot pile up behind one
slow request, the FIFO is compacted once it holds twice what it held after the last compaction
(amortised O(1) per request; what it holds stays proportional to the requests in flight).

Timing is that of a timer per request: the timer fires when the loop decides the oldest
deadline has come, and expires every entry whose deadline is not later than that one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Any

from isolated_api.shared.errors import IPCTimeoutError

# Distinct timeouts with a FIFO of their own; requests with yet another timeout get a timer each.
_MAX_TIMEOUTS = 8
_MIN_COMPACT = 64


def _time_out(future: asyncio.Future[Any], request_id: Hashable, limit: float) -> None:
    """Fails ``future`` with the request's timeout, unless a reply (or anything else) ended it."""
    if not future.done():
        future.set_exception(IPCTimeoutError(f"no reply for request {request_id!r} within {limit:g} s"))


class Deadline:
    """One request's entry: holds its future until the request is finished."""

    __slots__ = ("future", "request_id")

    def __init__(self, future: asyncio.Future[Any], request_id: Hashable) -> None:
        self.future: asyncio.Future[Any] | None = future
        self.request_id = request_id

    def cancel(self) -> None:
        """The request ended: its timeout will not fire. Drops the future (and the reply it holds)
        now rather than when the entry is skipped."""
        self.future = None


class _TimeoutQueue:
    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float) -> None:
        self._loop = loop
        self._limit = limit
        self._entries: deque[tuple[float, Deadline]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._compact_at = _MIN_COMPACT

    def add(self, future: asyncio.Future[Any], request_id: Hashable) -> Deadline:
        when = self._loop.time() + self._limit
        entry = Deadline(future, request_id)
        entries = self._entries
        # Requests answered before this one leave the front now: under load the FIFO stays short.
        while entries and entries[0][1].future is None:
            entries.popleft()
        entries.append((when, entry))
        if self._timer is None:
            self._timer = self._loop.call_at(when, self._expire, when)
        elif len(entries) >= self._compact_at:
            self._compact()
        return entry

    def _compact(self) -> None:
        self._entries = deque(item for item in self._entries if item[1].future is not None)
        self._compact_at = max(_MIN_COMPACT, 2 * len(self._entries))

    def _expire(self, due: float) -> None:
        self._timer = None
        entries = self._entries
        while entries:
            when, entry = entries[0]
            future = entry.future
            if future is not None and when > due:
                self._timer = self._loop.call_at(when, self._expire, when)
                return
            entries.popleft()
            if future is not None:
                _time_out(future, entry.request_id, self._limit)

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._entries.clear()


class Deadlines:
    """The channel's unary timeouts. ``add`` returns what the request cancels once it ends: its
    entry in the FIFO of its timeout, or, past ``_MAX_TIMEOUTS`` distinct values, a loop timer of
    its own (``close`` stops the FIFOs only; a request's own timer finds its future done)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: dict[float, _TimeoutQueue] = {}

    def add(self, future: asyncio.Future[Any], request_id: Hashable, limit: float) -> Deadline | asyncio.TimerHandle:
        queue = self._queues.get(limit)
        if queue is None:
            if len(self._queues) >= _MAX_TIMEOUTS:
                return self._loop.call_later(limit, _time_out, future, request_id, limit)
            queue = self._queues[limit] = _TimeoutQueue(self._loop, limit)
        return queue.add(future, request_id)

    @property
    def held(self) -> int:
        """Entries kept right now, finished ones not yet dropped included."""
        return sum(len(queue) for queue in self._queues.values())

    def close(self) -> None:
        for queue in self._queues.values():
            queue.close()
        self._queues.clear()
