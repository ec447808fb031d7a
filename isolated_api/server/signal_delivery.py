"""Makes sure a stop signal reaches a main thread that is blocked in a read.

Python runs a signal's handler on the main thread, at its next bytecode; the C part of the handler
only sets a flag. A main thread blocked in ``request_q.get()`` (an ``os.read`` of the queue's pipe)
sees the flag only if the read is interrupted, and two ways leave it uninterrupted, for good: the
kernel may deliver a signal sent to the process to any of its threads (the relay's, a writer's)
while the main thread is not on a CPU; and a signal that lands on the main thread just before it
enters ``read`` finds nothing to interrupt yet. Either way Ctrl-C, or SIGTERM's graceful stop,
did nothing until the next request came (seen once in CI: the demo's main process stayed blocked
in ``request_q.get()`` after a Ctrl-C to its group).

So while a subprocess-mode server runs, a thread of ours reads the signal wakeup fd (one byte per
delivery, on whatever thread it landed). For Ctrl-C and SIGTERM it waits for the handler to have
run; if it has not within ``_PATIENCE``, it sends the signal again to the main thread itself
(``pthread_kill``), which interrupts a read (CPython installs handlers without ``SA_RESTART``);
the flag set twice runs the handler once. A main thread busy in C that holds the GIL is only sent
the signal a bounded number of times, and takes it when it returns.

Only done from the main thread, when the wakeup fd is free (an asyncio loop in the main thread has
it, and wakes on its own) and the handlers are Python's default for Ctrl-C and ours for SIGTERM;
an application's own handlers are left alone.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("isolated_api.server")

Handler = Callable[[int, FrameType | None], Any]

# How long a handler may take to run after its signal landed before the main thread is sent it
# again, and how many times: a main thread blocked in a read runs it within microseconds of the
# second signal; one in a long C call, whenever that returns.
_PATIENCE = 0.1
_MAX_RESENDS = 20


class SignalDelivery:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # signal -> (our handler, the one it replaced), for the signals watched
        self._watched: dict[int, tuple[Handler, Any]] = {}
        # signal -> deliveries seen on the wakeup fd / runs of its handler / our own sends not yet
        # seen there (each send is one more delivery, which must not be taken for a new signal)
        self._seen: dict[int, int] = {}
        self._handled: dict[int, int] = {}
        self._echoes: dict[int, int] = {}
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        """Watching the wakeup fd (False when it was taken, or off the main thread)."""
        return self._pipe is not None

    def install(self) -> bool:
        """Starts watching (main thread only); False if the wakeup fd is taken or this is not the
        main thread. Handlers are counted from ``watch`` on, either way."""
        if threading.current_thread() is not threading.main_thread() or self._pipe is not None:
            return False
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # set_wakeup_fd requires it: a signal must never block
        try:
            previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:
            previous = -2
        if previous != -1:
            if previous >= 0:
                signal.set_wakeup_fd(previous)  # someone else's: given back untouched
            os.close(read_fd)
            os.close(write_fd)
            return False
        self._pipe = (read_fd, write_fd)
        with self._lock:
            self._seen, self._handled, self._echoes = {}, {}, {}
        self._thread = threading.Thread(target=self._watch, args=(read_fd,), name="isolated-api-signals", daemon=True)
        self._thread.start()
        return True

    def watch(self, signum: int, handler: Handler) -> None:
        """Installs ``handler`` for ``signum`` (main thread only), counting its runs: what the
        watcher waits for. ``uninstall`` puts back the handler it replaced."""
        previous = signal.getsignal(signum)

        def run(signum: int, frame: FrameType | None) -> Any:
            with self._lock:
                # Deliveries that came before it ran are one run: the flag was set once for all.
                self._handled[signum] = max(self._handled.get(signum, 0) + 1, self._seen.get(signum, 0))
            return handler(signum, frame)

        signal.signal(signum, run)
        self._watched[signum] = (run, previous)

    def release(self, signum: int) -> None:
        """Puts back the handler ``watch`` replaced for ``signum``, if it is still ours (main
        thread only); the signal is no longer watched."""
        watched = self._watched.pop(signum, None)
        if watched is not None and signal.getsignal(signum) is watched[0]:
            signal.signal(signum, watched[1])

    def uninstall(self) -> None:
        """Stops watching, puts back the handlers ``watch`` replaced (if still ours) and gives the
        wakeup fd back (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in list(self._watched):
            self.release(signum)
        if self._pipe is None:
            return
        _, write_fd = self._pipe
        self._pipe = None
        current = signal.set_wakeup_fd(-1)
        if current not in (-1, write_fd):
            signal.set_wakeup_fd(current)  # set by someone since: theirs now
        try:
            os.write(write_fd, b"\0")  # wakes the watcher (0 is no signal's number); it closes its end
        except OSError:
            pass
        os.close(write_fd)
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _watch(self, read_fd: int) -> None:
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        resends = 0
        try:
            while True:
                waiting = self._unhandled()
                ready = poller.poll(_PATIENCE * 1000 if waiting else None)
                if ready:
                    data = os.read(read_fd, 512)
                    if not data or 0 in data:
                        return  # uninstalled
                    self._note(data)
                    continue
                if not waiting:
                    resends = 0
                    continue
                main = threading.main_thread().ident
                if resends >= _MAX_RESENDS or main is None:
                    logger.warning("the main thread has not run its handler for signal %d yet", waiting)
                    self._give_up(waiting)
                    resends = 0
                    continue
                with self._lock:
                    self._echoes[waiting] = self._echoes.get(waiting, 0) + 1
                resends += 1
                signal.pthread_kill(main, waiting)
        except OSError:
            logger.exception("watching for signals failed")
        finally:
            os.close(read_fd)

    def _note(self, data: bytes) -> None:
        with self._lock:
            for signum in data:
                if signum not in self._watched:
                    continue
                if self._echoes.get(signum, 0):
                    self._echoes[signum] -= 1
                    continue
                self._seen[signum] = self._seen.get(signum, 0) + 1

    def _unhandled(self) -> int:
        """A signal that landed more often than its handler ran, or 0."""
        with self._lock:
            for signum, seen in self._seen.items():
                if self._handled.get(signum, 0) < seen:
                    return signum
        return 0

    def _give_up(self, signum: int) -> None:
        with self._lock:
            self._handled[signum] = self._seen[signum]
