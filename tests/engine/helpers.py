"""Shared helpers: reading ``response_q`` as the relay does (a message may be a list of replies),
a server in front of the queues, and many HTTP calls at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from isolated_api import Server
from isolated_api.testing import loopback_builder


class Replies:
    """Reads ``response_q``; ``messages`` counts the queue items, ``replies`` what they held."""

    def __init__(self, response_q: Any) -> None:
        self.response_q = response_q
        self.messages: list[list[Any]] = []
        self._unread: list[Any] = []

    def next(self, timeout: float = 10.0) -> Any:
        if not self._unread:
            message = self.response_q.get(timeout=timeout)
            batch = message if type(message) is list else [message]
            self.messages.append(batch)
            self._unread.extend(batch)
        return self._unread.pop(0)

    def take(self, count: int, timeout: float = 10.0) -> list[Any]:
        return [self.next(timeout) for _ in range(count)]


def server(
    queues: tuple[Any, Any],
    routes: list[tuple[str, Callable[..., Any]]],
    *,
    workers: int = 1,
    cancellation: bool = False,
    max_pending: int | None = None,
    name: str = "batching",
) -> Server:
    builder = loopback_builder(name, timeout=30).routes
    for path, route in routes:
        builder = builder.with_route(path, route, methods=["POST"])
    sub = builder.done().subprocess.with_ipc(*queues).with_cancellation(cancellation)
    if max_pending is not None:
        sub = sub.with_max_pending(max_pending)
    return sub.done().uvicorn.with_workers(workers).done().build()


async def _gather(url: str, bodies: list[dict[str, Any]], timeout: float) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies) + 1)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return list(await asyncio.gather(*(client.post(url, json=b) for b in bodies)))


def post_all(url: str, bodies: list[dict[str, Any]], timeout: float = 30.0) -> list[httpx.Response]:
    """All the POSTs at once, each on a connection of its own; responses in the bodies' order."""
    return asyncio.run(_gather(url, bodies, timeout))
