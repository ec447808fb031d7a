"""What the channel needs from a transport (a "link"), and what a link calls back.

Three links exist: ``LocalLink`` (the channel runs in the process that owns the user's queues),
and ``PipeLink`` (the channel runs in an HTTP child and talks to the main process over
private pipes), and ``EngineLink`` (requests go to remote engines over ZeroMQ). The channel's
registry logic is the same over all three.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

from isolated_api.shared.errors import IPCError


class LinkSink(Protocol):
    """Called by a link on the event loop's thread, in a callback of its own: never from inside
    ``Link.send`` (the channel registers a request's waiter just after sending it)."""

    def on_replies(self, replies: list[Any]) -> None: ...

    def on_failure(self, request_id: Hashable, error: IPCError) -> None: ...

    def on_link_lost(self, reason: str) -> None: ...

    @property
    def pending_count(self) -> int:
        """Requests awaiting a reply; one being sent is not counted yet."""


class Link(Protocol):
    async def open(self, sink: LinkSink) -> None: ...

    def send(self, request_id: Hashable, request: Any, *, streaming: bool) -> None:
        """Hands the request on without blocking the loop. May raise ``IPCError``."""

    def cancel(self, request_id: Hashable, reason: str = "cancelled") -> None:
        """The request ended without its (final) reply: forget its route (and, if the server
        opted in, tell the main process why)."""

    async def close(self) -> None: ...
