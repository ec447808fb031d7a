"""The limit on a request body's size (413), enforced as the body comes in, never after buffering it.
(The time a body may take is the HTTP protocol's: ``head_limits.py``.)

A plain ASGI middleware (``BaseHTTPMiddleware`` would buffer and hide disconnects):

- a ``Content-Length`` over the limit is answered 413 at once: the app never runs, nothing is read;
- a ``Content-Length`` within it passes untouched: the HTTP parser delivers no more than declared,
  so the common request costs one look at its headers;
- a body without a declared length (chunked) is counted as the app reads it, and once the total
  passes the limit the client is answered 413.

Refusing mid-body, the middleware answers for the app and then tells it the client is gone
(``http.disconnect``): FastAPI stops reading, a handler never runs, nothing reaches the main
process, and whatever the app sends afterwards is dropped. Each refusal carries
``Connection: close``: the rest of the body is never read. uvicorn buffers at most 64 KiB of a
body the app is not reading, so a request held up elsewhere costs no more than that.
"""

from __future__ import annotations

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
        self.too_large = f"request body larger than {self.max_size} bytes (max_body_size)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_size is None:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None:
            if declared > self.max_size:
                await send_refusal(send, 413, self.too_large)
                return
            await self.app(scope, receive, send)
            return
        await self.app(scope, *_LimitedBody(self, receive, send).endpoints())


class _LimitedBody:
    """One body of no declared length as the app sees it: counted, cut off when refused."""

    def __init__(self, limits: BodyLimitMiddleware, receive: Receive, send: Send) -> None:
        self._limits = limits
        self._receive = receive
        self._send = send
        self._received = 0
        self._complete = False
        self._response_started = False
        self._refused = False

    def endpoints(self) -> tuple[Receive, Send]:
        return self.receive, self.send

    async def receive(self) -> Message:
        if self._refused:
            return _DISCONNECT
        message = await self._receive()
        if self._complete or message["type"] != "http.request":
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
