"""The worker's writes into its uplink pipe: small frames through the asyncio pipe transport, a
large one from the caller's own buffers.

asyncio's pipe transport copies what a write can't send at once into a buffer of its own, and its
``writelines`` joins the buffers first. A 16 MiB upload through a 1 MiB pipe was so copied whole,
into a fresh 16 MiB allocation (about 10 ms on a VM, most of it page faults), on the event loop
that serves every other request of this worker. Here ``writelines`` sends with ``os.writev`` from
the buffers it is given; what the pipe can't take yet waits as views of them (no copy) and goes as
the pipe drains, with everything written after it queued behind, so frames keep their order.

A large frame goes announced, in parts (``framing.Announced``): the small frames written while it
waits go between two parts, ahead of it, so a small request never waits for a whole upload to
cross the pipe. A write that must stay behind it (a cancel, which must not reach the main process
before its request) says so.

The transport still does the rest: small writes, and noticing that the main process closed the
pipe (its protocol's ``connection_lost``). Bytes are only ever written by one of the two at a
time: ``writelines`` writes directly only when the transport holds nothing unsent, and while views
wait here every write joins them.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import deque
from collections.abc import Callable

from isolated_api.shared.framing import HEADER_SIZE, SIZED_FRAME, Announced, Body

# What one writev call may be given (Linux's IOV_MAX).
_IOV_MAX = 1024


class UplinkWriter:
    def __init__(self, transport: asyncio.WriteTransport, fd: int, on_error: Callable[[str], None]) -> None:
        self._transport = transport
        # A descriptor of its own for the same pipe: an event loop may refuse to watch one that a
        # transport uses (uvloop does). Closed with the writer, so the main process still sees
        # end-of-file when this worker goes.
        self._fd = os.dup(fd)
        self._closed = False
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        # The bytes being written, whole before anything else (a part, or small writes); the
        # small writes that go before the next part; and, in order, the announced frames and the
        # writes that stay behind them.
        self._unit: deque[memoryview] = deque()
        self._passing: list[memoryview] = []
        self._ordered: deque[Announced | memoryview] = deque()
        self._watching = False

    @property
    def waiting_bytes(self) -> int:
        """Bytes written here that the pipe has not taken yet (for tests)."""
        waiting = sum(len(view) for view in itertools.chain(self._unit, self._passing))
        return waiting + sum(item.unsent if isinstance(item, Announced) else len(item) for item in self._ordered)

    @property
    def holds_large(self) -> bool:
        """A large frame (or a write behind one) waits here: small writes may pass it."""
        return bool(self._ordered)

    def _busy(self) -> bool:
        return bool(self._unit or self._passing or self._ordered)

    def write(self, data: bytes, *, may_pass: bool = True) -> None:
        """``data``: whole frames. ``may_pass``: it may go ahead of a large frame still waiting
        (False for one that must follow everything written before it)."""
        if self._closed:
            return
        if not self._busy():
            self._transport.write(data)
            return
        if may_pass and len(data) < SIZED_FRAME:
            self._passing.append(memoryview(data))
        else:
            self._ordered.append(memoryview(data))
        if not self._watching:
            self._send()

    def writelines(self, parts: list[Body]) -> None:
        """Writes one frame given as pieces, its header first, never joined; they must not change
        until written (the caller's request, which stays alive until its reply)."""
        if self._closed:
            return
        if not self._busy() and self._transport.get_write_buffer_size():
            # The transport holds bytes the pipe has not taken yet (it is full): these go behind
            # them, through it, whole. One copy, and only while the main process is behind.
            self._transport.write(b"".join(parts))
            return
        if sum(len(part) for part in parts) - HEADER_SIZE < SIZED_FRAME:
            self.write(b"".join(parts))
            return
        self._ordered.append(Announced.of_frame(parts))
        if not self._watching:
            self._send()

    def _next_unit(self) -> bool:
        if self._passing:
            self._unit.extend(self._passing)
            self._passing = []
            return True
        if not self._ordered:
            return False
        head = self._ordered[0]
        if isinstance(head, Announced):
            self._unit.extend(memoryview(part) for part in head.next_unit())
            if head.done:
                self._ordered.popleft()
        else:
            self._ordered.popleft()
            self._unit.append(head)
        return True

    def _send(self) -> None:
        unit = self._unit
        while unit or self._next_unit():
            batch = list(itertools.islice(unit, _IOV_MAX))
            try:
                count = os.writev(self._fd, batch)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # the main process closed the pipe (the transport tells too)
                self.discard()
                self._on_error(f"the main process stopped reading the IPC link: {exc}")
                return
            short = count < sum(len(view) for view in batch)
            while count:
                head = unit[0]
                if count >= len(head):
                    count -= len(head)
                    unit.popleft()
                else:
                    unit[0] = head[count:]
                    count = 0
            if short:  # the pipe is full: the rest goes when it drains
                break
        busy = self._busy()
        if busy and not self._watching:
            self._loop.add_writer(self._fd, self._send)
            self._watching = True
        elif not busy and self._watching:
            self._loop.remove_writer(self._fd)
            self._watching = False

    def discard(self) -> None:
        """The link is lost: what waits is dropped (its requests fail with the link)."""
        self._unit.clear()
        self._passing = []
        self._ordered.clear()
        if self._watching:
            self._loop.remove_writer(self._fd)
            self._watching = False
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def close(self) -> None:
        """Closes the transport once what waits here and in it is written."""
        rest: list[Body] = []
        while self._unit or self._next_unit():
            rest += self._unit
            self._unit.clear()
        self.discard()
        if rest:  # the transport writes it before it closes; that it copies no longer matters
            self._transport.write(b"".join(rest))
        self._transport.close()
