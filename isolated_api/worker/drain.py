"""Draining: once a drain starts, new HTTP requests are answered 503 (with ``Connection: close``
so clients reconnect elsewhere) while requests already inside the app run to completion, up to a
deadline. A plain ASGI middleware: it must not buffer streaming bodies or hide disconnects."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from isolated_api.worker import request_origin

logger = logging.getLogger("isolated_api.shutdown")

_BODY = json.dumps({"detail": "the server is shutting down"}).encode()
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"retry-after", b"1"),
    (b"connection", b"close"),
]


class DrainState:
    """Counts requests inside the app and tells when the last one left after a drain began.

    ``on_first_done()`` runs once, when the first request leaves the app (answered, or failed
    with the 500 the error middleware then sends): a worker tells its supervisor so that it
    had been serving. Here rather than in a middleware of its own, which would cost every
    request a coroutine frame (docs/performance.md, "Figures behind the code")."""

    def __init__(self, on_first_done: Callable[[], None] | None = None) -> None:
        self.draining = False
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_first_done = on_first_done

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()
        if self._on_first_done is not None:
            first_done, self._on_first_done = self._on_first_done, None
            first_done()

    async def drain(self, timeout: float) -> bool:
        """Refuses new requests from now on; waits up to ``timeout`` s for in-flight ones.
        Returns True if none were left."""
        self.draining = True
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            logger.warning("drain: %d request(s) still running after %.1f s", self.active, timeout)
            return False
        logger.info("drain: in-flight requests finished in %.3f s", time.monotonic() - started)
        return True


class DrainMiddleware:
    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Every request passes here, outside the user's middleware (whose tasks inherit the
        # context): the method and path a request to the main process came from (request_origin).
        request_origin.remember(scope)
        state = self.state
        if state.draining:
            await send({"type": "http.response.start", "status": 503, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": _BODY})
            return
        state.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            state.leave()
