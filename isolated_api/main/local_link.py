"""A link for a channel that lives in the same process as the user's queues (tests, direct mode,
a channel built with ``IPCChannel(request_q, response_q)``)."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

from isolated_api.main.relay import Relay, flatten
from isolated_api.shared.link import LinkSink


class _LoopEndpoint:
    """Hands replies from the relay's thread to the channel's event loop, one call per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: LinkSink) -> None:
        self.name = "in-process channel"
        self._loop = loop
        self._sink = sink

    def deliver(self, replies: list[Any], raws: list[bytes | None]) -> None:
        try:
            self._loop.call_soon_threadsafe(self._sink.on_replies, flatten(replies))
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class LocalLink:
    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._endpoint: _LoopEndpoint | None = None

    async def open(self, sink: LinkSink) -> None:
        self._endpoint = _LoopEndpoint(asyncio.get_running_loop(), sink)
        self._relay.start()

    def send(self, request_id: Hashable, request: Any, *, streaming: bool) -> None:
        assert self._endpoint is not None, "open() first"
        self._relay.forward(self._endpoint, request_id, request=request, streaming=streaming)

    def cancel(self, request_id: Hashable, reason: str = "cancelled") -> None:
        if self._endpoint is not None:
            self._relay.abandon(self._endpoint, request_id, reason)

    async def close(self) -> None:
        if self._endpoint is not None:
            self._relay.detach(self._endpoint, "closed")
            self._endpoint = None
        # The relay's reader joins a thread: keep the loop free while it does.
        await asyncio.to_thread(self._relay.close)


def in_process_link(request_q: Any, response_q: Any, *, queue_timeout: float) -> LocalLink:
    """A link to a relay of its own over the caller's queues, read and written in this process."""
    return LocalLink(Relay(request_q, response_q, queue_timeout=queue_timeout))
