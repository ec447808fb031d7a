"""Server-Sent Events from a ``ChunkStream``: ``return await sse_response(channel.submit_streaming(req))``.

Design: the status line is a promise, so nothing is promised before the first chunk is in hand.
``sse_response`` awaits the first chunk and only then builds the response; until then every
failure is an exception the app's IPCError handlers turn into a real status: over ``max_pending``
503 + Retry-After (raised by ``submit_streaming`` itself), no first chunk in time 504, an
``ErrorReply`` first chunk its own status, channel closed 503. Once the 200 is out, a failure can
only be said in-band: an ``event: error`` frame ends the stream.

The wire format, the response class and the keep-alive comment are FastAPI's (``fastapi.sse``,
FastAPI >= 0.135). FastAPI's own SSE mode (a generator endpoint with
``response_class=EventSourceResponse``) sends the 200 before the generator runs and its keep-alive
interval is a module global, so it can't give the statuses above; we only reuse its pieces.

While the engine is silent, a ``: ping`` comment goes out every ``keepalive`` seconds so proxies
and browsers keep the connection; the stream's idle timeout keeps counting across them.

Client gone: Starlette's ``StreamingResponse`` (ASGI spec < 2.4, as uvicorn speaks) listens for
``http.disconnect`` and cancels the body; ``_ChunkStreamResponse.__call__`` closes the stream in a
``finally`` whatever was running, so its registry entry leaves at once and later chunks are dropped
and counted (by the relay once it has heard the cancel, by the channel before that).

Slow client: uvicorn stops taking body frames once its socket's write buffer is full, so this loop
stops pulling chunks, and they collect in the stream's bounded buffer (``submit_streaming(...,
buffer_size=256)``). When it is full:
- with ``merge=merge_text`` (token streams), each new chunk is folded into the last buffered one:
  the text stays complete, the client just gets fewer, bigger frames, until the merged chunk would
  pass ``max_chars`` (``TextMerge``): then the stream fails as below;
- without a merge, the stream fails with ``StreamOverflowError``: the client gets the chunks already
  buffered, then an ``event: error`` frame, and later chunks are dropped and counted.
Memory per stream is thus bounded by ``buffer_size`` chunks (one of them holding at most ``max_chars``
of merged text), plus the socket buffers.
The same rule meets a fast client when an engine bursts: the relay hands replies over in batches
(what it reads within 0.2 ms, up to 512 messages, each of which may be a ``ReplyBatcher`` bundle),
so a burst longer than ``buffer_size`` can be merged (or overflow) before any consumer can run.
(A burst of tokens put back to back reaches even a fast client merged into fewer frames, text
intact: docs/performance.md, "Figures behind the code".) Give a stream without a merge a buffer
larger than its engine's bursts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, ServerSentEvent, format_sse_event
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from isolated_api.shared.errors import IPCError
from isolated_api.worker.chunk_stream import END, IDLE, ChunkStream

logger = logging.getLogger("isolated_api.streaming")

Encode = Callable[[Any], "str | ServerSentEvent"]

# Headers so that nothing between the engine and the browser holds frames back.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# Nginx's convention for "client closed request": nobody reads it, but it names the case in logs.
CLIENT_CLOSED_REQUEST = 499

# At most this many frames per write when chunks are waiting.
_BURST = 64


def encode_json(chunk: Any) -> str:
    """The default ``encode``: the chunk as compact JSON (dataclasses, pydantic models, dicts...)."""
    return json.dumps(jsonable_encoder(chunk), separators=(",", ":"), ensure_ascii=False)


def _frame(item: str | ServerSentEvent) -> bytes:
    if isinstance(item, str):
        return format_sse_event(data_str=item)
    if item.raw_data is not None:
        data: str | None = item.raw_data
    elif item.data is not None:
        data = encode_json(item.data)
    else:
        data = None
    return format_sse_event(data_str=data, event=item.event, id=item.id, retry=item.retry, comment=item.comment)


def error_frame(error: BaseException) -> bytes:
    """The ``event: error`` frame that ends a stream which failed after its 200."""
    if isinstance(error, IPCError):
        detail, status = error.message, error.status_code
    else:
        detail, status = "internal error while streaming", 500
    return format_sse_event(data_str=json.dumps({"detail": detail, "status": status}), event="error")


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _ChunkStreamResponse(EventSourceResponse):
    def __init__(
        self,
        stream: ChunkStream,
        first: bytes | None,
        encode: Encode,
        keepalive: float,
        done: str | None,
        headers: Mapping[str, str],
    ) -> None:
        self._stream = stream
        self._first = first
        self._encode = encode
        self._keepalive = keepalive
        self._done = done
        self._frames = self._body()
        super().__init__(self._frames, headers={**SSE_HEADERS, **headers})

    async def _body(self) -> AsyncGenerator[bytes, None]:
        stream = self._stream
        if self._first is not None:
            yield self._first
            self._first = None
        while True:
            chunk = await self._next()
            if chunk is END:
                break
            if chunk is IDLE:
                yield KEEPALIVE_COMMENT
                continue
            # Chunks already waiting go out in one write: one send (one syscall) per burst
            # instead of one per token when the engine is ahead of the socket.
            frames: list[bytes] = []
            while True:
                if type(chunk) is _Failed:
                    frames.append(error_frame(chunk.error))
                    yield b"".join(frames)
                    return
                try:
                    frames.append(_frame(self._encode(chunk)))
                except Exception as exc:
                    logger.exception("encoding a chunk of stream %r failed", stream.request_id)
                    await stream.aclose("cancelled")
                    frames.append(error_frame(exc))
                    yield b"".join(frames)
                    return
                if not stream.ready or len(frames) >= _BURST:
                    break
                chunk = await self._next()  # returns at once: something is ready
                if chunk is END:
                    break
            yield b"".join(frames)
            if chunk is END:
                break
        if self._done is not None:
            yield format_sse_event(data_str=self._done)

    async def _next(self) -> Any:
        try:
            return await self._stream.next_chunk(self._keepalive)
        except IPCError as exc:
            # Timeout, ErrorReply, overflow, channel closed: the 200 is out, say it in-band.
            return _Failed(exc)
        except Exception as exc:
            logger.exception("stream %r failed", self._stream.request_id)
            return _Failed(exc)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Finished, failed, or the client went away mid-stream (the body was cancelled
            # wherever it was): the stream leaves the registry now, not when the GC gets to it,
            # and if it was still open the main side hears "disconnected" (IPCChannel._settle).
            await self._stream.aclose("disconnected")
            await self._frames.aclose()


async def _wait_disconnect(request: Request) -> None:
    # The handler's arguments are resolved, so the request body has been read: the next ASGI
    # message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def sse_response(
    stream: ChunkStream,
    encode: Encode = encode_json,
    *,
    keepalive: float = 15.0,
    done: str | None = None,
    request: Request | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Turns ``stream`` into a ``text/event-stream`` response, one ``data:`` frame per chunk
    (``encode(chunk)`` gives the data string, or a ``ServerSentEvent`` for ``event``/``id``
    fields; default: JSON), the final chunk included. Awaits the first chunk before returning,
    so errors up to then are real HTTP statuses (see the module docstring).

    ``keepalive``: seconds of engine silence between ``: ping`` comments. ``done``: a last data
    frame after the final chunk (``"[DONE]"`` for OpenAI-style clients). ``request``: if given,
    a client that leaves while the first chunk is awaited ends the stream at once (499).
    """
    if keepalive <= 0:
        raise ValueError(f"keepalive must be > 0, got {keepalive}")
    try:
        if request is None:
            first = await stream.next_chunk()
        else:
            first = await _first_unless_disconnected(stream, request)
            if first is None:
                return Response(status_code=CLIENT_CLOSED_REQUEST)
        # Encoded now so that an encode() bug is a 500, not a 200 followed by an error frame.
        first_frame = None if first is END else _frame(encode(first))
    except BaseException:
        await stream.aclose()
        raise
    return _ChunkStreamResponse(stream, first_frame, encode, keepalive, done, headers or {})


async def _first_unless_disconnected(stream: ChunkStream, request: Request) -> Any:
    first = asyncio.ensure_future(stream.next_chunk())
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait((first, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not first.done():
            await stream.aclose("disconnected")  # settles with the reason before the cancel does
            first.cancel()
            # Let next_chunk see the cancellation and release the stream's slot before going on.
            await asyncio.wait((first,))
    if first.cancelled():
        return None
    return first.result()
