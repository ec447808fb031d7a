"""IPCChannel: awaits replies from the main process for requests sent from an event loop.

Design: a registry maps each request id to its waiter. The link delivers replies on the loop's
thread in batches; each reply resolves the waiter for its id with one dict lookup, so waking a
waiter costs the same with 1 or 1,000 pending. A request leaves the registry exactly once: when
its reply arrives, or in ``submit``'s ``finally`` (timeout, cancellation, failure). A reply whose
id is not registered (unknown, late, abandoned) is dropped and counted, never kept.

Streams: a stream's chunks wait in its own bounded buffer (``StreamWaiter``) until the consumer
takes them. The entry leaves the registry when the final chunk (or an ``ErrorReply``) arrives,
when the buffer overflows, or at once when the consumer stops (break, ``aclose``, cancellation,
idle timeout), so a slow or vanished client can neither hold a ``max_pending`` slot nor grow
memory without bound. Nothing a reply carries (a bad ``is_final``, a ``merge`` that raises) can
break the batch it arrived in: the fault fails its own stream only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any

# The one crossing from the worker side to the main-process side: a channel built over the caller's
# own queues has the relay in its own process (import-linter allows just this import).
from isolated_api.main.local_link import in_process_link
from isolated_api.shared.config import IPCConfig
from isolated_api.shared.errors import (
    ChannelClosedError,
    DuplicateRequestIdError,
    IPCError,
    IPCTimeoutError,
    OverloadedError,
    RemoteError,
)
from isolated_api.shared.link import Link
from isolated_api.shared.messages import CLIENT_DISCONNECTED, ErrorReply
from isolated_api.worker.chunk_stream import ChunkStream, Merge, StreamWaiter
from isolated_api.worker.deadlines import Deadlines

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
            link = in_process_link(request_q, response_q, queue_timeout=self._config.queue_timeout)
        self._link = link
        self._waiters: dict[Hashable, _UnaryWaiter | StreamWaiter] = {}
        self._open = False
        self._closed_reason = "the IPC channel is not started"
        self._dropped = 0
        self._rejected = 0
        self._lost_callbacks: list[Callable[[str], None]] = []
        self._deadlines: Deadlines | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start_polling(self) -> None:
        """Opens the link. Call on the loop that will submit requests."""
        if self._open:
            return
        await self._link.open(self)
        self._deadlines = Deadlines(asyncio.get_running_loop())
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
        A request without ``.id``, or whose id is not hashable, raises ``TypeError`` before anything
        is sent: the wrong kind of object, as Python's own protocols report it (``hash([])``), and
        what this API has always raised, so code that catches it keeps working.
        """
        request_id = self._admit(request)
        # Sent before the waiter is registered: the main process starts on the request while
        # this coroutine registers it (sooner at one connection). No reply can come in
        # between: every link hands replies over on this loop, after this coroutine suspends.
        self._link.send(request_id, request, streaming=False)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiter = _UnaryWaiter(future)
        self._waiters[request_id] = waiter
        limit = self._timeout if timeout is None else timeout
        reason = "cancelled"
        # The timeout fails the future (not ``asyncio.timeout()``: a third of its cost), and a
        # reply that lands first simply wins. Requests share one timer per timeout value
        # (``Deadlines``).
        assert self._deadlines is not None  # set while the channel is open (``_admit``)
        deadline = self._deadlines.add(future, request_id, limit)
        try:
            reply = await future
        except IPCTimeoutError:
            reason = "timeout"
            raise
        except asyncio.CancelledError as exc:
            if exc.args and exc.args[0] == CLIENT_DISCONNECTED:
                reason = "disconnected"
            raise
        finally:
            deadline.cancel()
            if not future.done():  # cancelled: nothing may fail this future later, unseen
                future.cancel()
            self._settle(request_id, waiter, reason)
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
        first_chunk_timeout: float | None = None,
    ) -> ChunkStream:
        """Sends ``request`` and returns an async iterator over the chunks the main process puts
        on ``response_q`` with the same ``.id``, in order, up to and including the one with
        ``is_final=True``.

        Admission happens now (``OverloadedError`` / ``ChannelClosedError`` raise here, before any
        response is started). ``timeout`` is the idle limit between chunks (default: the response
        timeout). At most ``buffer_size`` chunks wait for a slow reader; then ``merge(older,
        newer)`` folds them (see ``merge_text``, which also ends the stream past its ``max_chars``),
        or without it the stream fails with ``StreamOverflowError``. An ``ErrorReply`` chunk raises
        ``RemoteError``.
        ``first_chunk_timeout`` (default: ``timeout``) bounds the wait for the first chunk, which
        for a model includes reading the prompt and is often longer than the gaps between tokens.
        """
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        request_id = self._admit(request)
        self._link.send(request_id, request, streaming=True)  # first, as in ``submit``
        waiter = StreamWaiter(buffer_size, merge)
        self._waiters[request_id] = waiter
        idle = self._timeout if timeout is None else timeout
        return ChunkStream(self._settle, request_id, waiter, idle, first_chunk_timeout)

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

    def _settle(self, request_id: Hashable, waiter: _UnaryWaiter | StreamWaiter, reason: str = "cancelled") -> None:
        # Still registered means no reply ended it (timeout, cancellation, client gone, stream
        # abandoned): tell the main side to forget the id, so its later replies are dropped there.
        if self._waiters.get(request_id) is waiter:
            del self._waiters[request_id]
            if self._open:
                # The one place where the main side hears that nobody waits for ``request_id``
                # any more, once per abandoned request or stream, with why ("timeout",
                # "disconnected", "cancelled"): the relay forgets the route, and tells the main
                # process (a CancelRequest on request_q) when the server opted in to that.
                self._link.cancel(request_id, reason)

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
            if type(waiter) is _UnaryWaiter and waiter.future.done():
                # Its task was cancelled (a timeout firing in this same loop iteration): the
                # reply has no taker any more.
                del waiters[request_id]
                self._dropped += 1
                continue
            try:
                done = waiter.offer(reply)
            except Exception as exc:  # one bad reply must not cost the rest of the batch
                logger.exception("a reply for %r could not be handed to its waiter", request_id)
                waiter.fail(RemoteError(f"the reply could not be handed over: {exc!r}", 500))
                done = True
            if done:
                del waiters[request_id]
                if type(waiter) is StreamWaiter and waiter.discarded:
                    self._dropped += 1
                    if self._open:
                        self._link.cancel(request_id, "cancelled")

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
        if self._deadlines is not None:
            self._deadlines.close()
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.fail(ChannelClosedError(reason))
