"""Per-request context a handler may take as its second argument: the request id and whether the
request was cancelled (client gone, ``CancelRequest`` received, or the engine stopping)."""

from __future__ import annotations

import threading
from collections.abc import Hashable


class RequestContext:
    """Handed to handlers declared as ``fn(request, ctx)``. Sync handlers poll ``ctx.cancelled``
    (or wait on ``ctx.wait_cancelled(seconds)``) to stop early; async handlers are cancelled for
    them (``asyncio.CancelledError``) and only need it to read ``cancel_reason``."""

    __slots__ = ("_event", "cancel_reason", "id")

    def __init__(self, request_id: Hashable) -> None:
        self.id = request_id
        self.cancel_reason: str | None = None
        self._event = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Blocks up to ``timeout`` seconds; True as soon as the request is cancelled. Use it for
        waits inside sync handlers so a cancellation ends them at once."""
        return self._event.wait(timeout)

    def cancel(self, reason: str) -> None:
        if not self._event.is_set():
            self.cancel_reason = reason
            self._event.set()
