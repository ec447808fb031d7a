"""A uvicorn server whose shutdown is a drain: SIGTERM/SIGINT or ``request_drain()`` refuse new
requests with 503, let in-flight ones finish up to a deadline, then stop uvicorn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

from isolated_api.worker.drain import DrainState

logger = logging.getLogger("isolated_api.shutdown")

# What uvicorn may still spend on lingering connections once the drain is over.
_FINAL_GRACE = 1.0


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        drain: DrainState,
        *,
        signal_drain_timeout: float,
        on_started: Callable[[DrainingServer], None] | None = None,
        on_drain_expired: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(config)
        self.drain_state = drain
        self._signal_drain_timeout = signal_drain_timeout
        self._on_started = on_started
        self._on_drain_expired = on_drain_expired
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)  # type: ignore[arg-type]
        if self.started and not self.should_exit and self._on_started is not None:
            self._on_started(self)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Signal handlers only schedule; the loop does the work (and uvicorn must not re-raise
        # the signal after a graceful exit, so it is not recorded).
        self.request_drain(self._signal_drain_timeout)

    def request_drain(self, timeout: float) -> None:
        """Thread-safe: start draining (once); uvicorn exits when it is over."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.should_exit = True
            return
        try:
            loop.call_soon_threadsafe(self._start_drain, timeout)
        except RuntimeError:  # loop closed meanwhile
            self.should_exit = True

    def request_exit_now(self) -> None:
        """Thread-safe: stop at once (the main process is gone; waiting would serve nobody)."""
        self.config.timeout_graceful_shutdown = int(_FINAL_GRACE)
        self.drain_state.draining = True
        self.should_exit = True

    def _start_drain(self, timeout: float) -> None:
        if self._drain_task is None and not self.should_exit:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(timeout))

    async def _drain(self, timeout: float) -> None:
        if not await self.drain_state.drain(timeout) and self._on_drain_expired is not None:
            # Requests still waiting on the main process end now with an honest 503 instead of
            # being cancelled by uvicorn (a 500 with a traceback).
            await self._on_drain_expired()
        self.config.timeout_graceful_shutdown = int(_FINAL_GRACE)
        self.should_exit = True
