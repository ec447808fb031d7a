"""Counts answered HTTP requests by method, route template (``/items/{id}``, never the raw path,
so label cardinality stays bounded) and status. A plain ASGI middleware: it only watches
``http.response.start`` go by."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Record = Callable[[str, str, int], None]


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, record: Record) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app fails before answering, Starlette's error middleware sends 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            self.record(scope["method"], template, status)
