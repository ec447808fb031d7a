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
"""

from __future__ import annotations

import collections
import os
import select
import threading
import time
from collections.abc import Callable

from isolated_api.shared.config import OutboxLimits

# os.writev takes at most this many buffers per call (Linux: 1024).
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


class _Write:
    """One write: its buffers, of which what the pipe has not taken yet (the first one cut)."""

    __slots__ = ("size", "views")

    def __init__(self, views: list[memoryview]) -> None:
        self.views = views
        self.size = sum(len(view) for view in views)


class Outbox:
    def __init__(self, fd: int, *, name: str, limits: OutboxLimits, on_stalled: Callable[[str], None]) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self._name = name
        self._limits = limits
        self._on_stalled = on_stalled
        self._cond = threading.Condition(threading.Lock())
        self._pending: collections.deque[_Write] = collections.deque()
        self._pending_bytes = 0
        self._progress_at = 0.0
        self._open = True
        self._thread: threading.Thread | None = None
        self.deferred_writes = 0  # writes the pipe did not take whole at once

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def write(self, *parts: bytes | bytearray | memoryview) -> bool:
        """Queues ``parts``, one write, behind what is waiting, writing what the pipe takes now
        (several parts in one ``writev``: a frame's header and its payload are never joined, the
        payload never copied). False when the outbox is closed (the worker is gone or stalled):
        the write is dropped."""
        stalled = None
        with self._cond:
            if not self._open:
                return False
            write = _Write([memoryview(part) for part in parts if len(part)])
            if not self._pending:
                try:
                    self._write_some(write)
                except OSError:  # the worker is gone; its uplink EOF does the cleanup
                    self._open = False
                    return False
                if not write.size:
                    return True
                self._progress_at = time.monotonic()
            else:
                # What waits behind the write in progress, before this one: a reply of any size
                # goes out to a worker that reads it, as the write in progress or queued behind
                # it; only writes that keep piling up behind one that does not move are a stall.
                behind = self._pending_bytes - self._pending[0].size
                if behind > self._limits.max_queued_bytes:
                    stalled = (
                        f"{behind} bytes waiting for it behind the write in progress, over the bound of "
                        f"{self._limits.max_queued_bytes}"
                    )
                    self._close_locked()
            if stalled is None:
                self._pending.append(write)
                self._pending_bytes += write.size
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

    def close(self) -> None:
        """Drops what waits and stops the writer thread; later writes are dropped."""
        with self._cond:
            self._close_locked()

    def _close_locked(self) -> None:
        self._open = False
        self._pending.clear()
        self._pending_bytes = 0
        self._cond.notify()

    def _write_some(self, write: _Write) -> int:
        # Non-blocking: takes off ``write`` what the pipe took, and returns how much that was.
        views = write.views
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
        write.size -= taken
        return taken

    def _drain(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        while True:
            with self._cond:
                while self._open and not self._pending:
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

    def _flush_locked(self) -> None:
        pending = self._pending
        while pending:
            head = pending[0]
            taken = self._write_some(head)
            if taken:
                self._pending_bytes -= taken
                self._progress_at = time.monotonic()
            if head.size:
                return
            pending.popleft()
