"""SIGTERM to the main process as a graceful stop, and a second Ctrl-C that can't break ``stop()``.

SIGTERM is what systemd, Docker and Kubernetes send on every deploy, and Python's default ends the
process at once: every request in flight is lost. While a subprocess-mode server runs (started
from the main thread, with SIGTERM still at ``SIG_DFL``), SIGTERM instead does what Ctrl-C does in
the README's loop, in the order a load balancer needs:

1. ``stop()`` starts on a thread of its own: readiness and new requests get 503 at once, and the
   requests in flight finish, since the main loop keeps answering them meanwhile;
2. once stopped, the main thread is told to stop as Ctrl-C tells it: ``KeyboardInterrupt``,
   raised by this handler when the signal is sent again to the main thread (a signal is the one
   thing that wakes a main thread blocked in ``request_q.get()``).

``Server.start()`` needs no step 2: its ``wait()`` returns when the server stops. A repeated
SIGTERM is logged and ignored. ``stop()`` called on the main thread puts ``SIG_DFL`` back; a handler
that is not the default (the application's own) is never replaced. During ``stop()`` on the main
thread, SIGINT (if it is still Python's ``default_int_handler``) is logged and ignored instead of
raising ``KeyboardInterrupt`` out of the clean-up.

Until ``stop()``, both signals are also watched (``signal_delivery.py``): one that lands while the
main thread is blocked in ``request_q.get()`` and leaves that read uninterrupted is sent again to
the main thread, so Ctrl-C and SIGTERM always reach it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from isolated_api.server.signal_delivery import SignalDelivery

logger = logging.getLogger("isolated_api.server")


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class SigtermStop:
    def __init__(self, stop: Callable[[float], None], drain_timeout: float) -> None:
        self._stop = stop
        self._drain_timeout = drain_timeout
        self._lock = threading.Lock()
        self._installed = False
        self._interrupt = True
        # idle -> draining -> stopped -> interrupted; read by the handler without the lock (a
        # handler that took it could deadlock on its own thread).
        self._state = "idle"
        self._main_in_stop = False
        self._delivery = SignalDelivery()

    @property
    def installed(self) -> bool:
        return self._installed

    def install(self, *, interrupt: bool) -> bool:
        """Takes SIGTERM over if this is the main thread and nobody else has; True if it did.
        ``interrupt``: raise ``KeyboardInterrupt`` in the main thread once stopped."""
        if not _on_main_thread():
            return False
        if not self._delivery.active and self._delivery.install():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._delivery.watch(signal.SIGINT, signal.default_int_handler)
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False
        with self._lock:
            self._installed = True
            self._interrupt = interrupt
            self._state = "idle"
            self._main_in_stop = False
        self._delivery.watch(signal.SIGTERM, self._handle)
        return True

    @contextmanager
    def stopping(self) -> Iterator[None]:
        """Wraps ``stop()``: on the main thread no signal raises in it, and SIGTERM is given back."""
        if not _on_main_thread():
            yield
            return
        self._main_in_stop = True
        # Ctrl-C back to Python's own handler, which _sigint_logged replaces during the stop.
        self._delivery.release(signal.SIGINT)
        try:
            with _sigint_logged():
                yield
        finally:
            self._restore()

    def _restore(self) -> None:
        with self._lock:
            self._delivery.uninstall()  # SIGTERM back to SIG_DFL, if it is still ours
            self._installed = False
            self._main_in_stop = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._state == "idle":
            self._state = "draining"
            logger.warning(
                "SIGTERM: stopping gracefully (new requests get 503; in-flight ones get up to %g s)",
                self._drain_timeout,
            )
            threading.Thread(target=self._stop_then_interrupt, name="isolated-api-sigterm", daemon=True).start()
            return
        if self._state == "stopped" and not self._main_in_stop:
            self._state = "interrupted"
            raise KeyboardInterrupt
        if self._state == "draining":
            logger.warning("SIGTERM again: already stopping")

    def _stop_then_interrupt(self) -> None:
        try:
            self._stop(self._drain_timeout)
        except Exception:
            logger.exception("stopping on SIGTERM failed")
        with self._lock:
            # Restored meanwhile: the main thread is stopping on its own and must not be disturbed.
            if not self._installed or not self._interrupt:
                return
            self._state = "stopped"
            main = threading.main_thread().ident
            if main is not None:
                signal.pthread_kill(main, signal.SIGTERM)


@contextmanager
def _sigint_logged() -> Iterator[None]:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def already_stopping(signum: int, frame: Any) -> None:
        logger.warning("interrupted again: already stopping (in-flight requests are finishing)")

    signal.signal(signal.SIGINT, already_stopping)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
