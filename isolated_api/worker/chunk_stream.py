"""A stream's side of the channel: the bounded buffer its chunks wait in (``StreamWaiter``) and
the async iterator the route reads them from (``ChunkStream``).

A slow client must not grow memory without bound: at most ``limit`` chunks wait; past that a
``merge(older, newer)`` folds the newer chunk into the last waiting one (``merge_text`` for token
streams: the texts are concatenated, nothing is lost, up to its ``max_chars``), and without a
merge the stream fails with ``StreamOverflowError``. A final chunk or an ``ErrorReply`` is never
merged away. A ``TextMerge`` (``merge_text``) folds through a ``TextFold`` kept in the buffer's
last slot, so a client that never reads costs linear time (see ``text_merge``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from isolated_api.shared.errors import IPCTimeoutError, RemoteError, StreamOverflowError
from isolated_api.shared.messages import ErrorReply
from isolated_api.worker.text_merge import TextFold, TextMerge

logger = logging.getLogger("isolated_api.channel")

# settle(request_id, waiter, reason): the channel forgets the stream (and tells the main side why).
Settle = Callable[[Hashable, "StreamWaiter", str], None]

Merge = Callable[[Any, Any], Any]


class StreamWaiter:
    """Chunks of one stream, in arrival order, in a bounded buffer. When the buffer is full a
    ``merge(older, newer)`` function folds the newer chunk into the last buffered one (for token
    streams: concatenate the text); without one the stream fails with ``StreamOverflowError``."""

    __slots__ = ("_wakeup", "buffer", "complete", "discarded", "error", "limit", "merge")

    def __init__(self, limit: int, merge: Merge | None) -> None:
        self.buffer: deque[Any] = deque()
        self.limit = limit
        self.merge = merge
        self.error: BaseException | None = None
        # The final chunk (or an ErrorReply) arrived: once the buffer is empty the stream ends,
        # even if a user's merge folded the final chunk into one that does not say so.
        self.complete = False
        # The chunk that ended the stream was not kept (overflow, unreadable): count it as dropped.
        self.discarded = False
        self._wakeup: asyncio.Future[None] | None = None

    def offer(self, chunk: Any) -> bool:
        """Takes a chunk; returns True when the stream needs no more chunks (its entry leaves)."""
        if self.error is not None:
            return True
        try:
            final = type(chunk) is ErrorReply or bool(getattr(chunk, "is_final", False))
        except Exception as exc:  # a user's is_final property that raises: fail this stream only
            self.discarded = True
            self.fail(StreamOverflowError(f"a chunk's is_final could not be read: {exc!r}"))
            return True
        if len(self.buffer) < self.limit or type(chunk) is ErrorReply:
            # An ErrorReply is never merged (it has no text) and is the last chunk: one over the
            # limit at most.
            self.buffer.append(chunk)
        elif self.merge is not None and type(self.buffer[-1]) is not ErrorReply:
            try:
                refused = self._merge(chunk)
            except Exception as exc:
                logger.exception("merge() failed on a full stream buffer")
                self.discarded = True
                self.fail(StreamOverflowError(f"stream buffer of {self.limit} chunks full and merge() failed: {exc!r}"))
                return True
            if refused:
                self.discarded = True
                self.fail(StreamOverflowError(f"stream buffer of {self.limit} chunks full and {refused}"))
                return True
        else:
            self.discarded = True
            self.fail(StreamOverflowError(f"stream buffer of {self.limit} chunks overflowed: the client is too slow"))
            return True
        if final:
            self.complete = True
        self._wake()
        return final

    def _merge(self, chunk: Any) -> str | None:
        """Folds ``chunk`` into the last buffered one; says why not when a merge's bound refuses it."""
        last, merge = self.buffer[-1], self.merge
        if isinstance(merge, TextMerge):
            if type(last) is not TextFold:
                last = self.buffer[-1] = merge.fold(last)
            if not last.add(chunk):
                return f"its merged text past {merge.max_chars} characters overflowed: the client is too slow"
        elif merge is not None:
            self.buffer[-1] = merge(last, chunk)
        return None

    def take(self) -> Any:
        """The oldest waiting chunk, out of the buffer (a fold becomes the chunk it stands for)."""
        chunk = self.buffer.popleft()
        return chunk.result() if type(chunk) is TextFold else chunk

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


class StreamSignal(enum.Enum):
    """What ``ChunkStream.next_chunk`` returns instead of a chunk."""

    IDLE = "idle"  # ``idle_after`` seconds passed without a chunk (time for an SSE keep-alive)
    END = "end"  # the stream is over (its final chunk was already returned, or it was closed)


IDLE = StreamSignal.IDLE
END = StreamSignal.END


class ChunkStream:
    """The async iterator returned by ``IPCChannel.submit_streaming``. Ends after the chunk with
    ``is_final=True`` (which it yields). Leaving early (``break``, ``aclose()``, an exception,
    the client disconnecting) removes the stream from the registry at once; later chunks for it
    are dropped and counted."""

    def __init__(
        self,
        settle: Settle,
        request_id: Hashable,
        waiter: StreamWaiter,
        idle_timeout: float,
        first_chunk_timeout: float | None = None,
    ) -> None:
        self._settle = settle
        self.request_id = request_id
        self._waiter = waiter
        self._idle_timeout = idle_timeout
        self._next_timeout = idle_timeout if first_chunk_timeout is None else first_chunk_timeout
        # When the current wait for a chunk gave up (loop time); kept across IDLE returns so
        # keep-alives do not stretch the idle timeout.
        self._deadline: float | None = None
        self._finished = False
        self.received = 0

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Any:
        chunk = await self.next_chunk()
        if chunk is END:
            raise StopAsyncIteration
        return chunk

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def ready(self) -> int:
        """Chunks (or an end) that ``next_chunk`` would return without waiting: lets a writer
        send a burst in one write."""
        waiter = self._waiter
        return len(waiter.buffer) + (waiter.error is not None or waiter.complete)

    async def next_chunk(self, idle_after: float | None = None) -> Any:
        """The next chunk, or ``END`` once the stream is over, or ``IDLE`` when ``idle_after``
        seconds pass without a chunk (the stream stays open; call again). The idle timeout counts
        from the end of the previous chunk and raises ``IPCTimeoutError``; ``ErrorReply`` raises
        ``RemoteError``; an overflow raises ``StreamOverflowError``. Any exception, cancellation
        included, ends the stream."""
        waiter = self._waiter
        while True:
            if self._finished:
                return END
            if waiter.buffer:
                try:
                    chunk = waiter.take()
                except BaseException:
                    self._finish()  # a user's chunk class refused the merged text: the stream is over
                    raise
                self._deadline = None
                self._next_timeout = self._idle_timeout
                if type(chunk) is ErrorReply:
                    self._finish()
                    raise RemoteError(chunk.message, chunk.http_status)
                self.received += 1
                if not waiter.buffer and waiter.complete:
                    self._finish()
                return chunk
            if waiter.error is not None:
                self._finish()
                raise waiter.error
            if waiter.complete:
                self._finish()
                return END
            loop = asyncio.get_running_loop()
            now = loop.time()
            if self._deadline is None:
                self._deadline = now + self._next_timeout
            wake_at = self._deadline if idle_after is None else min(self._deadline, now + idle_after)
            try:
                async with asyncio.timeout_at(wake_at):
                    await waiter.wait()
            except TimeoutError:
                # A chunk that landed in the same loop iteration as the deadline wins.
                if waiter.buffer or waiter.error is not None or waiter.complete:
                    continue
                if loop.time() < self._deadline:
                    return IDLE
                self._finish("timeout")
                raise IPCTimeoutError(
                    f"no chunk for stream {self.request_id!r} within {self._next_timeout:g} s"
                ) from None
            except BaseException:
                self._finish()
                raise

    async def aclose(self, reason: str = "cancelled") -> None:
        """Ends the stream now. ``reason`` goes to the main side if the stream was still open
        (``"disconnected"`` when its client left)."""
        self._finish(reason)

    async def __aenter__(self) -> ChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._finish()

    def _finish(self, reason: str = "cancelled") -> None:
        if not self._finished:
            self._finished = True
            self._waiter.buffer.clear()  # what the consumer will never read must not stay alive
            self._settle(self.request_id, self._waiter, reason)

    def __del__(self) -> None:
        # An iterator dropped without being exhausted must not keep its registry slot.
        if not self._finished:
            try:
                self._finish()
            except Exception:
                pass
