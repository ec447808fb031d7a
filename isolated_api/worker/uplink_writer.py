"""The worker's writes into its uplink pipe: small frames through the asyncio pipe transport, a
large one from the caller's own buffers.

asyncio's pipe transport copies what a write can't send at once into a buffer of its own, and its
``writelines`` joins the buffers first. A 16 MiB upload through a 1 MiB pipe was so copied whole,
into a fresh 16 MiB allocation (about 10 ms on a VM, most of it page faults), on the event loop
that serves every other request of this worker. Here ``writelines`` sends with ``os.writev`` from
the buffers it is given; what the pipe can't take yet waits as views of them (no copy) and goes as
the pipe drains, with everything written after it queued behind, so frames keep their order.

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

from isolated_api.shared.framing import Body

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
        self._waiting: deque[memoryview] = deque()
        self._watching = False

    @property
    def waiting_bytes(self) -> int:
        """Bytes written here that the pipe has not taken yet (for tests)."""
        return sum(len(view) for view in self._waiting)

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        if self._waiting:
            self._waiting.append(memoryview(data))  # behind what waits: order is kept
            return
        self._transport.write(data)

    def writelines(self, parts: list[Body]) -> None:
        """Writes ``parts`` one after another, never joined; they must not change until written
        (the caller's request, which stays alive until its reply)."""
        if self._closed:
            return
        if not self._waiting and self._transport.get_write_buffer_size():
            # The transport holds bytes the pipe has not taken yet (it is full): these go behind
            # them, through it. One copy, and only while the main process is behind.
            self._transport.write(b"".join(parts))
            return
        was_waiting = bool(self._waiting)
        self._waiting.extend(memoryview(part) for part in parts)
        if not was_waiting:
            self._send()

    def _send(self) -> None:
        waiting = self._waiting
        while waiting:
            batch = list(itertools.islice(waiting, _IOV_MAX))
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
                head = waiting[0]
                if count >= len(head):
                    count -= len(head)
                    waiting.popleft()
                else:
                    waiting[0] = head[count:]
                    count = 0
            if short:  # the pipe is full: the rest goes when it drains
                break
        if waiting and not self._watching:
            self._loop.add_writer(self._fd, self._send)
            self._watching = True
        elif not waiting and self._watching:
            self._loop.remove_writer(self._fd)
            self._watching = False

    def discard(self) -> None:
        """The link is lost: what waits is dropped (its requests fail with the link)."""
        self._waiting.clear()
        if self._watching:
            self._loop.remove_writer(self._fd)
            self._watching = False
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def close(self) -> None:
        """Closes the transport once what waits here and in it is written."""
        rest = b"".join(self._waiting)
        self.discard()
        if rest:  # the transport writes it before it closes; that it copies no longer matters
            self._transport.write(rest)
        self._transport.close()
