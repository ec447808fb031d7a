"""What the main process writes to one HTTP worker's pipe, without ever blocking the writer.

Why: a worker whose event loop is blocked (a sync call inside ``async def``, SIGSTOP) stops
reading its pipe; once the pipe (64 KiB on Linux) is full, a blocking write waits for that worker,
and with it the relay's thread (replies to every other worker) and ``stop()``. So the pipe is
non-blocking: a write goes straight to the pipe when nothing is queued and the pipe takes it (the
common case: no thread hop), and whatever the pipe refuses waits in this worker's outbox, which a
writer thread of its own (started on first need, asleep on a condition otherwise) sends as the
pipe drains. The outbox is bounded: when a write finds more than ``max_queued_bytes`` already
queued behind the write in progress, or when the pipe took nothing for ``stall_timeout`` seconds,
the worker is declared stalled (``on_stalled`` once) and nothing more is queued for it; the
endpoint then treats it as dead. A single write is never judged by its size (a reply may be
larger than the bound): what this process holds for one worker is at most the write in progress,
the bound, and the one write that passed it.

A large frame is written announced, part by part (``framing.Announced``): between two parts the
small writes queued behind it go first, unless they carry an id it carries too (a stream's next
item, which must follow it). So a small reply waits for at most one part of a 16 MiB one, not for
all of it.
"""

from __future__ import annotations

import collections
import itertools
import os
import select
import threading
import time
from collections.abc import Callable, Hashable

from isolated_api.shared.config import OutboxLimits
from isolated_api.shared.framing import HEADER_SIZE as _HEADER_SIZE
from isolated_api.shared.framing import SIZED_FRAME, Announced, Body

# os.writev takes at most this many buffers per call (Linux: 1024).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16

Keys = frozenset[Hashable]
_NO_KEYS: Keys = frozenset()


class _Write:
    """One write: its bytes still to go (a small write's buffers, or an announced frame's parts),
    and the ids of the requests it answers."""

    __slots__ = ("announced", "keys", "size", "views")

    def __init__(self, views: list[memoryview], keys: Keys, announced: Announced | None = None) -> None:
        self.views = views
        self.keys = keys
        self.announced = announced
        self.size = announced.wire_size if announced is not None else sum(len(view) for view in views)


class Outbox:
    def __init__(self, fd: int, *, name: str, limits: OutboxLimits, on_stalled: Callable[[str], None]) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self._name = name
        self._limits = limits
        self._on_stalled = on_stalled
        self._cond = threading.Condition(threading.Lock())
        # Writes not yet begun, and the announced one under way (first); the bytes being written
        # now (a part, or small writes taken whole), which go whole before anything else, and
        # the write they belong to.
        self._pending: collections.deque[_Write] = collections.deque()
        self._unit: list[memoryview] = []
        self._unit_of: _Write | None = None
        self._pending_bytes = 0
        self._progress_at = 0.0
        self._open = True
        self._thread: threading.Thread | None = None
        self.deferred_writes = 0  # writes the pipe did not take whole at once

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def write(self, *parts: Body, keys: Keys = _NO_KEYS) -> bool:
        """Queues ``parts``, one write, behind what is waiting, writing what the pipe takes now
        (several parts in one ``writev``: a frame's header and its payload are never joined, the
        payload never copied). ``keys``: the ids of the requests it answers (none for control
        frames). False when the outbox is closed (the worker is gone or stalled): the write is
        dropped."""
        return self._queue(_Write([memoryview(part) for part in parts if len(part)], keys))

    def write_frame(self, parts: list[Body], keys: Keys = _NO_KEYS) -> bool:
        """One frame as pieces, its header first: announced and written in parts if it is large
        (``SIZED_FRAME`` or more), so that small writes may go between them; as ``write`` if not."""
        body = sum(len(part) for part in parts) - _HEADER_SIZE
        if body < SIZED_FRAME:
            return self.write(*parts, keys=keys)
        return self._queue(_Write([], keys, Announced.of_frame(parts)))

    def _queue(self, write: _Write) -> bool:
        stalled = None
        with self._cond:
            if not self._open:
                return False
            idle = not self._pending and not self._unit
            if not idle:
                # What waits behind the write in progress, before this one: a reply of any size
                # goes out to a worker that reads it, as the write in progress or queued behind
                # it; only writes that keep piling up behind one that does not move are a stall.
                behind = self._pending_bytes - self._in_progress()
                if behind > self._limits.max_queued_bytes:
                    stalled = (
                        f"{behind} bytes waiting for it behind the write in progress, over the bound of "
                        f"{self._limits.max_queued_bytes}"
                    )
                    self._close_locked()
            if stalled is None:
                self._pending.append(write)
                self._pending_bytes += write.size
                if idle:
                    # Written here, with no thread hop. Otherwise the pipe refused the last bytes
                    # (a flush stops only then): the writer thread goes on once it has room.
                    self._progress_at = time.monotonic()
                    try:
                        self._flush_locked()
                    except OSError:  # the worker is gone; its uplink EOF does the cleanup
                        self._close_locked()
                        return False
                if self._pending or self._unit:
                    if write.size:
                        self.deferred_writes += 1
                    if self._thread is None:
                        name = f"isolated-api-{self._name}-out"
                        self._thread = threading.Thread(target=self._drain, name=name, daemon=True)
                        self._thread.start()
                    else:
                        self._cond.notify()
                return True
        self._on_stalled(stalled)
        return False

    def _in_progress(self) -> int:
        # The bytes of the write being written, and of the announced one under way.
        size = self._unit_of.size if self._unit_of is not None and self._unit_of.announced is None else 0
        if self._pending and self._pending[0].announced is not None:
            size += self._pending[0].size
        return size

    def close(self) -> None:
        """Drops what waits and stops the writer thread; later writes are dropped."""
        with self._cond:
            self._close_locked()

    def _close_locked(self) -> None:
        self._open = False
        self._pending.clear()
        self._unit = []
        self._unit_of = None
        self._pending_bytes = 0
        self._cond.notify()

    def _next_unit(self) -> bool:
        """Picks the bytes to write next, whole: False if nothing waits. Behind an announced frame
        under way, the small writes that may pass it (none of its ids, nor of any write they would
        pass) go first, all in one unit; otherwise its next part."""
        pending = self._pending
        if not pending:
            return False
        head = pending[0]
        if head.announced is None:
            pending.popleft()
            self._unit, self._unit_of = head.views, head
            return True
        held = set(head.keys)
        passing = []
        for write in itertools.islice(pending, 1, None):
            if write.announced is None and write.size < SIZED_FRAME and held.isdisjoint(write.keys):
                passing.append(write)
            else:
                held.update(write.keys)
        if passing:
            for write in passing:
                pending.remove(write)
                write.size = 0  # its bytes are the unit's now
            merged = _Write([view for write in passing for view in write.views], _NO_KEYS)
            self._unit, self._unit_of = merged.views, merged
            return True
        self._unit = [memoryview(part) for part in head.announced.next_unit()]
        self._unit_of = head
        return True

    def _flush_locked(self) -> None:
        # Non-blocking: writes units while the pipe takes them whole.
        while self._unit or self._next_unit():
            taken = self._write_some(self._unit)
            if taken:
                self._pending_bytes -= taken
                self._progress_at = time.monotonic()
                if self._unit_of is not None:
                    self._unit_of.size -= taken
            if self._unit:
                return  # the pipe is full
            head = self._unit_of
            self._unit_of = None
            if head is not None and head.announced is not None and head.announced.done:
                self._pending.popleft()

    def _write_some(self, views: list[memoryview]) -> int:
        # Takes off ``views`` what the pipe took, and returns how much that was.
        taken = 0
        while views:
            try:
                count = os.writev(self._fd, views[:_IOV_MAX]) if len(views) > 1 else os.write(self._fd, views[0])
            except BlockingIOError:
                break
            taken += count
            done = 0
            while done < len(views) and count >= len(views[done]):
                count -= len(views[done])
                done += 1
            if done:
                del views[:done]
            if count:
                views[0] = views[0][count:]
        return taken

    def _drain(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while True:
            with self._cond:
                while self._open and not self._pending and not self._unit:
                    self._cond.wait()
                if not self._open:
                    return
                wait = self._progress_at + self._limits.stall_timeout - time.monotonic()
            # Outside the lock: write() keeps queueing meanwhile.
            ready = poller.poll(max(0.0, wait) * 1000) if wait > 0 else []
            stalled = None
            with self._cond:
                if not self._open:
                    return
                if ready:
                    try:
                        self._flush_locked()
                    except OSError:
                        self._close_locked()
                        return
                elif time.monotonic() - self._progress_at >= self._limits.stall_timeout:
                    stalled = f"its pipe took nothing for {self._limits.stall_timeout:g} s"
                    self._close_locked()
            if stalled is not None:
                self._on_stalled(stalled)
                return
