"""A shared-memory arena for large payloads between the main process and one HTTP worker
incarnation (``.subprocess.with_shared_payloads``).

Why an anonymous ``memfd`` and not ``multiprocessing.shared_memory``: a segment named in
``/dev/shm`` outlives every process that forgets to unlink it, and on Python 3.11 the
``resource_tracker`` neither reclaims a killed worker's segments nor survives a process-group kill
(issue 28 lists the traps). A memfd has no name: the main process creates it, maps it, and hands
the worker a descriptor at spawn; the kernel frees the memory when the last process mapping it
exits, whichever of them is SIGKILLed. Where ``os.memfd_create`` does not exist (macOS) or fails,
there is no arena and payloads take the pipes (``available``).

Layout: a page of slot states, then two regions. The worker writes requests into the *up* region
and the main process replies into the *down* one; each side allocates only in its own region
(``SlotAllocator``), so no lock is shared between processes. A slot's state byte is the only
thing both touch: set busy by the writer before it sends the handle, set free by the reader once
it has copied the bytes out. A handle is (slot, offset, length); the main process checks every
handle a worker sends against the up region's bounds before it reads a byte (``check_up``).
"""

from __future__ import annotations

import mmap
import os
import threading
from multiprocessing import reduction
from typing import Any

# Slots per direction: payloads of one direction in flight at once in the arena (more wait on
# the pipe: the arena full falls back, it never blocks).
SLOTS = 64
_HEADER = 4096  # the state bytes, padded to a page so regions start page-aligned
_ALIGN = 64
FREE, BUSY = 0, 1


def available() -> bool:
    """Whether this system has anonymous shared memory to pass to a worker (Linux's memfd)."""
    return hasattr(os, "memfd_create")


def region_size(arena_size: int) -> int:
    """What each direction gets of an arena of ``arena_size`` bytes."""
    return (arena_size - _HEADER) // 2 // _ALIGN * _ALIGN


class Arena:
    """One mapping of the arena; the main process's, or the worker's (``attach``)."""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self._mm = mmap.mmap(fd, size)
        # Kept: payloads are copied in and out with pwrite/pread on it, which release the GIL
        # (a copy through the mapping would hold it for milliseconds per 16 MiB, while the
        # relay's and the main loop's other threads wait). Slot states go through the mapping.
        self.fd = fd
        self.view = memoryview(self._mm)
        half = region_size(size)
        self.up = (_HEADER, _HEADER + half)
        self.down = (_HEADER + half, _HEADER + 2 * half)
        self.closed = False

    @classmethod
    def create(cls, size: int) -> tuple[Arena, int]:
        """A new arena and a descriptor of it for the worker (close it once the worker has it)."""
        fd = os.memfd_create("isolated-api-arena", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            child_fd = os.dup(fd)
        except OSError:
            os.close(fd)
            raise
        return cls(fd, size), child_fd

    def state(self, slot: int) -> int:
        return self._mm[slot]

    def set_state(self, slot: int, value: int) -> None:
        self._mm[slot] = value

    def states(self) -> bytes:
        return self._mm[: 2 * SLOTS]

    def check_up(self, slot: int, offset: int, length: int) -> str | None:
        """Why a request handle from the worker is refused (None: it lies in the up region)."""
        start, end = self.up
        if not 0 <= slot < SLOTS:
            return f"slot {slot} is not a request slot (0..{SLOTS - 1})"
        if length <= 0 or offset < start or offset + length > end:
            return f"bytes {offset}..{offset + length} lie outside the request region {start}..{end}"
        return None

    def write(self, offset: int, data: memoryview) -> None:
        """Copies ``data`` into the arena at ``offset``, without holding the GIL."""
        done = 0
        while done < len(data):
            done += os.pwritev(self.fd, [data[done:]], offset + done)

    def read_into(self, offset: int, target: memoryview) -> None:
        """Fills ``target`` from the arena at ``offset``, without holding the GIL."""
        done = 0
        while done < len(target):
            count = os.preadv(self.fd, [target[done:]], offset + done)
            if not count:
                raise ValueError(f"the arena ends before byte {offset + done}")
            done += count

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` as a new ``bytes`` (one copy, without the GIL)."""
        data = os.pread(self.fd, length, offset)
        if len(data) < length:
            buffer = bytearray(length)
            self.read_into(offset, memoryview(buffer))
            return bytes(buffer)
        return data

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            self.view.release()
            self._mm.close()
        except BufferError:  # a view of it is still held somewhere: the mapping goes with it
            pass


class SlotAllocator:
    """First-fit allocation in one region, by the one process that writes it. Slots whose state
    the reader set free are reaped on the next allocation."""

    def __init__(self, arena: Arena, region: tuple[int, int], first_slot: int) -> None:
        self._arena = arena
        self._start, self._end = region
        self._first = first_slot
        self._live: dict[int, tuple[int, int]] = {}  # slot -> (offset, end)
        self._lock = threading.Lock()

    def allocate(self, length: int) -> tuple[int, int] | None:
        """(slot, offset) of ``length`` bytes marked busy, or None when the region is full."""
        with self._lock:
            arena = self._arena
            if arena.closed:
                return None
            live = self._live
            if live:
                states = arena.states()
                for slot in [slot for slot in live if states[slot] == FREE]:
                    del live[slot]
            if len(live) >= SLOTS:
                return None
            offset = self._fit(length)
            if offset is None:
                return None
            slot = next(s for s in range(self._first, self._first + SLOTS) if s not in live)
            live[slot] = (offset, offset + length)
            arena.set_state(slot, BUSY)
            return slot, offset

    def _fit(self, length: int) -> int | None:
        cursor = self._start
        for offset, end in sorted(self._live.values()):
            if offset - cursor >= length:
                return cursor
            cursor = max(cursor, -(-end // _ALIGN) * _ALIGN)
        return cursor if self._end - cursor >= length else None

    @property
    def live_count(self) -> int:
        """Slots busy (reaping those freed since the last allocation)."""
        with self._lock:
            states = self._arena.states()
            return sum(1 for slot in self._live if states[slot] == BUSY)


class ArenaHandle:
    """What the worker is given of its arena at spawn: the descriptor (duplicated into the child
    by multiprocessing, as it does for the pipes) and the size."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_handle, (reduction.DupFd(self.fd), self.size))

    def attach(self) -> Arena:
        return Arena(self.fd, self.size)


def _rebuild_handle(dup: Any, size: int) -> ArenaHandle:
    return ArenaHandle(dup.detach(), size)
