"""Limits on a request's body: its size (413) and the time it takes to arrive (408), enforced as
the body comes in, never after buffering it.

A plain ASGI middleware (``BaseHTTPMiddleware`` would buffer and hide disconnects) that owns the
request's ``receive``:

- a ``Content-Length`` over the limit is answered 413 at once: the app never runs, nothing is read;
- otherwise each chunk is counted as the app reads it, and once the total passes the limit (a
  chunked body declares no length) the client is answered 413;
- the whole body must arrive within ``body_timeout`` of the headers, else 408.

Refusing mid-body, the middleware answers for the app and then tells it the client is gone
(``http.disconnect``): FastAPI stops reading, a handler never runs, nothing reaches the main
process, and whatever the app sends afterwards is dropped. Each refusal carries
``Connection: close``: the rest of the body is never read. uvicorn buffers at most 64 KiB of a
body the app is not reading, so a request held up elsewhere costs no more than that.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from isolated_api.shared.config import RequestLimits

_DISCONNECT: Message = {"type": "http.disconnect"}


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses a malformed length before the app runs
    return None


async def send_refusal(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: RequestLimits) -> None:
        self.app = app
        self.max_size = limits.max_body_size
        self.timeout = limits.body_timeout
        self.too_large = f"request body larger than {self.max_size} bytes (max_body_size)"
        self.too_slow = f"request body not received within {self.timeout} s (body_timeout)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.max_size is None and self.timeout is None):
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if self.max_size is not None and declared is not None and declared > self.max_size:
            await send_refusal(send, 413, self.too_large)
            return
        await self.app(scope, *_LimitedBody(self, receive, send).endpoints())


class _LimitedBody:
    """One request's body as the app sees it: counted, on a deadline, cut off when refused."""

    def __init__(self, limits: BodyLimitMiddleware, receive: Receive, send: Send) -> None:
        self._limits = limits
        self._receive = receive
        self._send = send
        loop = asyncio.get_running_loop()
        self._deadline = None if limits.timeout is None else loop.time() + limits.timeout
        self._received = 0
        self._complete = False
        self._response_started = False
        self._refused = False

    def endpoints(self) -> tuple[Receive, Send]:
        return self.receive, self.send

    async def receive(self) -> Message:
        if self._refused:
            return _DISCONNECT
        if self._complete:
            # Past the body only http.disconnect comes (a streaming response listens for it):
            # no deadline, nothing to count.
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            return await self._refuse(408, self._limits.too_slow)
        if message["type"] != "http.request":
            return message
        self._received += len(message.get("body", b""))
        max_size = self._limits.max_size
        if max_size is not None and self._received > max_size:
            return await self._refuse(413, self._limits.too_large)
        if not message.get("more_body", False):
            self._complete = True
        return message

    async def send(self, message: Message) -> None:
        if self._refused:
            return  # the client already has its answer: ours
        if message["type"] == "http.response.start":
            self._response_started = True
        await self._send(message)

    async def _refuse(self, status: int, detail: str) -> Message:
        self._refused = True
        # A response already under way can't be replaced: the app sees the disconnect and stops,
        # and uvicorn closes the connection when the response ends unfinished.
        if not self._response_started:
            await send_refusal(self._send, status, detail)
        return _DISCONNECT
