"""IPCChannel: awaits replies from the main process for requests sent from an event loop.

Design: a registry maps each request id to its waiter. The link delivers replies on the loop's
thread in batches; each reply resolves the waiter for its id with one dict lookup, so waking a
waiter costs the same with 1 or 1,000 pending. A request leaves the registry exactly once: when
its reply arrives, or in ``submit``'s ``finally`` (timeout, cancellation, failure). A reply whose
id is not registered (unknown, late, abandoned) is dropped and counted, never kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from features.configuration.settings import IPCConfig
from features.ipc.errors import (
    ChannelClosedError,
    DuplicateRequestIdError,
    IPCError,
    IPCTimeoutError,
    OverloadedError,
    RemoteError,
    StreamOverflowError,
)
from features.ipc.link import Link
from features.ipc.local_link import LocalLink
from features.ipc.messages import ErrorReply
from features.ipc.relay import Relay

logger = logging.getLogger("isolated_api.channel")

_MISSING = object()


class _UnaryWaiter:
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future

    def offer(self, reply: Any) -> bool:
        """Takes a reply; returns True when the request is complete."""
        if not self.future.done():
            self.future.set_result(reply)
        return True

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


Merge = Callable[[Any, Any], Any]
T = TypeVar("T")


class _StreamWaiter:
    """Chunks of one stream, in arrival order, in a bounded buffer. When the buffer is full a
    ``merge(older, newer)`` function folds the newer chunk into the last buffered one (for token
    streams: concatenate the text); without one the stream fails with ``StreamOverflowError``."""

    __slots__ = ("_wakeup", "buffer", "error", "limit", "merge", "overflowed")

    def __init__(self, limit: int, merge: Merge | None) -> None:
        self.buffer: deque[Any] = deque()
        self.limit = limit
        self.merge = merge
        self.error: BaseException | None = None
        self.overflowed = False
        self._wakeup: asyncio.Future[None] | None = None

    def offer(self, chunk: Any) -> bool:
        final = type(chunk) is ErrorReply or bool(getattr(chunk, "is_final", False))
        if len(self.buffer) < self.limit:
            self.buffer.append(chunk)
        elif self.merge is not None:
            self.buffer[-1] = self.merge(self.buffer[-1], chunk)
        else:
            self.overflowed = True
            self.fail(StreamOverflowError(f"stream buffer of {self.limit} chunks overflowed: the client is too slow"))
            return True
        self._wake()
        return final

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def wait(self) -> asyncio.Future[None]:
        self._wakeup = asyncio.get_running_loop().create_future()
        return self._wakeup


def merge_text(older: T, newer: T) -> T:
    """A ``merge`` for chunks with a ``text`` field (dataclasses): the newer chunk carrying both
    texts. Keeps the newer chunk's other fields, ``is_final`` included."""
    return dataclasses.replace(newer, text=older.text + newer.text)  # type: ignore[attr-defined,type-var]


class ChunkStream:
    """The async iterator returned by ``IPCChannel.submit_streaming``. Ends after the chunk with
    ``is_final=True`` (which it yields). Leaving early (``break``, ``aclose()``, an exception,
    the client disconnecting) removes the stream from the registry at once; later chunks for it
    are dropped and counted."""

    def __init__(self, channel: IPCChannel, request_id: Hashable, waiter: _StreamWaiter, idle_timeout: float) -> None:
        self._channel = channel
        self.request_id = request_id
        self._waiter = waiter
        self._idle_timeout = idle_timeout
        self._finished = False

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Any:
        waiter = self._waiter
        while True:
            if self._finished:
                raise StopAsyncIteration
            if waiter.buffer:
                chunk = waiter.buffer.popleft()
                if type(chunk) is ErrorReply:
                    self._finish()
                    raise RemoteError(chunk.message, chunk.http_status)
                if getattr(chunk, "is_final", False):
                    self._finish()
                return chunk
            if waiter.error is not None:
                self._finish()
                raise waiter.error
            try:
                async with asyncio.timeout(self._idle_timeout):
                    await waiter.wait()
            except TimeoutError:
                if waiter.buffer or waiter.error is not None:
                    continue
                self._finish()
                raise IPCTimeoutError(
                    f"no chunk for stream {self.request_id!r} within {self._idle_timeout:g} s"
                ) from None
            except BaseException:
                self._finish()
                raise

    async def aclose(self) -> None:
        self._finish()

    async def __aenter__(self) -> ChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._channel._settle(self.request_id, self._waiter)

    def __del__(self) -> None:
        # An iterator dropped without being exhausted must not keep its registry slot.
        if not self._finished:
            try:
                self._finish()
            except Exception:
                pass


def request_id_of(request: Any) -> Hashable:
    request_id = getattr(request, "id", _MISSING)
    if request_id is _MISSING:
        raise TypeError(f"a request must have an .id attribute; {type(request).__name__} has none")
    try:
        hash(request_id)
    except TypeError:
        raise TypeError(f"request id {request_id!r} is not hashable") from None
    return request_id


class IPCChannel:
    """Sends requests to the main process and awaits the replies with the same ``.id``.

    ``IPCChannel(request_q, response_q, config)`` builds a channel over two queues owned by this
    process. Inside a server built by ``ServerBuilder`` the channel is made for you and reached as
    ``request.app.state.ipc_channel`` or through the ``IPC`` dependency.

    ``start_polling()`` / ``stop_polling()`` must run on the event loop that calls ``submit``
    (the server's lifespan does it). The name is historical: nothing polls; a single reader
    blocks until replies arrive.
    """

    def __init__(
        self,
        request_q: Any = None,
        response_q: Any = None,
        config: IPCConfig | None = None,
        *,
        response_timeout: float = 60.0,
        link: Link | None = None,
    ) -> None:
        self._config = config or IPCConfig()
        if response_timeout <= 0:
            raise ValueError(f"response_timeout must be > 0, got {response_timeout}")
        self._timeout = response_timeout
        if link is None:
            if request_q is None or response_q is None:
                raise ValueError("IPCChannel needs request_q and response_q (or a link)")
            link = LocalLink(Relay(request_q, response_q, queue_timeout=self._config.queue_timeout))
        self._link = link
        self._waiters: dict[Hashable, _UnaryWaiter | _StreamWaiter] = {}
        self._open = False
        self._closed_reason = "the IPC channel is not started"
        self._dropped = 0
        self._rejected = 0
        self._lost_callbacks: list[Callable[[str], None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def start_polling(self) -> None:
        """Opens the link. Call on the loop that will submit requests."""
        if self._open:
            return
        await self._link.open(self)
        self._open = True

    async def stop_polling(self) -> None:
        """Closes the link; every request still waiting fails with ``ChannelClosedError`` (503)."""
        if not self._open:
            return
        self._close("the IPC channel was closed")
        await self._link.close()

    def add_link_lost_callback(self, callback: Callable[[str], None]) -> None:
        """``callback(reason)`` runs when the main process goes away."""
        self._lost_callbacks.append(callback)

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def pending_count(self) -> int:
        """Requests awaiting a reply right now."""
        return len(self._waiters)

    @property
    def dropped_count(self) -> int:
        """Replies dropped because no request was waiting for their id (late, unknown, abandoned)."""
        return self._dropped

    @property
    def rejected_count(self) -> int:
        """Requests refused at admission because ``max_pending`` were already waiting."""
        return self._rejected

    @property
    def max_pending(self) -> int:
        return self._config.max_pending

    @property
    def response_timeout(self) -> float:
        return self._timeout

    # -- requests --------------------------------------------------------------------------

    async def submit(self, request: Any, timeout: float | None = None) -> Any:
        """Sends ``request`` (it must have a hashable ``.id``) and returns the reply with that id.

        Raises ``IPCTimeoutError`` (504) after ``timeout`` seconds (default: the response
        timeout), ``OverloadedError`` (503) past ``max_pending``, ``ChannelClosedError`` (503)
        if the main process is gone, ``RemoteError`` (its status) for an ``ErrorReply``.
        """
        request_id = self._admit(request)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiter = _UnaryWaiter(future)
        self._waiters[request_id] = waiter
        limit = self._timeout if timeout is None else timeout
        try:
            self._link.send(request_id, request, streaming=False)
            try:
                async with asyncio.timeout(limit):
                    reply = await future
            except TimeoutError:
                # The reply may have landed in the same loop iteration as the deadline: prefer it.
                if not (future.done() and not future.cancelled() and future.exception() is None):
                    raise IPCTimeoutError(f"no reply for request {request_id!r} within {limit:g} s") from None
                reply = future.result()
        finally:
            self._settle(request_id, waiter)
        if type(reply) is ErrorReply:
            raise RemoteError(reply.message, reply.http_status)
        return reply

    def submit_streaming(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        buffer_size: int = 256,
        merge: Merge | None = None,
    ) -> ChunkStream:
        """Sends ``request`` and returns an async iterator over the chunks the main process puts
        on ``response_q`` with the same ``.id``, in order, up to and including the one with
        ``is_final=True``.

        Admission happens now (``OverloadedError`` / ``ChannelClosedError`` raise here, before any
        response is started). ``timeout`` is the idle limit between chunks (default: the response
        timeout). At most ``buffer_size`` chunks wait for a slow reader; then ``merge(older,
        newer)`` folds them (see ``merge_text``), or without it the stream fails with
        ``StreamOverflowError``. An ``ErrorReply`` chunk raises ``RemoteError``.
        """
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        request_id = self._admit(request)
        waiter = _StreamWaiter(buffer_size, merge)
        self._waiters[request_id] = waiter
        try:
            self._link.send(request_id, request, streaming=True)
        except BaseException:
            self._settle(request_id, waiter)
            raise
        return ChunkStream(self, request_id, waiter, self._timeout if timeout is None else timeout)

    def _admit(self, request: Any) -> Hashable:
        request_id = request_id_of(request)
        if not self._open:
            raise ChannelClosedError(self._closed_reason)
        if request_id in self._waiters:
            raise DuplicateRequestIdError(f"request id {request_id!r} is already awaiting a reply")
        if len(self._waiters) >= self._config.max_pending:
            self._rejected += 1
            raise OverloadedError(
                f"server busy: {self._config.max_pending} requests already awaiting replies",
                retry_after=self._config.retry_after,
                status_code=self._config.overload_status,
            )
        return request_id

    def _settle(self, request_id: Hashable, waiter: _UnaryWaiter | _StreamWaiter) -> None:
        # Still registered means no reply ended it: tell the main side to forget the id.
        if self._waiters.get(request_id) is waiter:
            del self._waiters[request_id]
            if self._open:
                self._link.cancel(request_id)

    # -- LinkSink: called by the link on the loop's thread ---------------------------------

    def on_replies(self, replies: list[Any]) -> None:
        waiters = self._waiters
        for reply in replies:
            request_id = getattr(reply, "id", _MISSING)
            try:
                waiter = waiters.get(request_id)
            except TypeError:
                waiter = None
            if waiter is None:
                self._dropped += 1
                continue
            if waiter.offer(reply):
                del waiters[request_id]
                if type(waiter) is _StreamWaiter and waiter.overflowed:
                    self._dropped += 1
                    if self._open:
                        self._link.cancel(request_id)

    def on_failure(self, request_id: Hashable, error: IPCError) -> None:
        waiter = self._waiters.pop(request_id, None)
        if waiter is None:
            self._dropped += 1
        else:
            waiter.fail(error)

    def on_link_lost(self, reason: str) -> None:
        if self._open:
            logger.warning("IPC link lost: %s", reason)
        self._close(reason)
        for callback in self._lost_callbacks:
            callback(reason)

    def _close(self, reason: str) -> None:
        self._open = False
        self._closed_reason = reason
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.fail(ChannelClosedError(reason))
