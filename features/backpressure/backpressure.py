"""Backpressure as a route author sees it.

Admission is the channel's: at most ``max_pending`` requests (unary and streaming together) await
replies; one more raises ``OverloadedError`` before anything is sent to the main process, and the
app answers it 503 (or 429, ``.subprocess.with_overload_status(429)``) with ``Retry-After`` and a
JSON ``detail``, without a traceback. What a route adds here:

- ``load_route``: the load the application can see (``pending_count``, ``rejected_count``).
- ``submit_unless_disconnected``: a unary submit that gives its slot back the moment the client
  hangs up. uvicorn does not cancel a handler whose client left, so a plain ``channel.submit``
  holds its slot until the reply or the timeout; under overload, clients that gave up would keep
  the server refusing the ones still there. (``.subprocess.with_cancellation()`` does this for
  every route at once, and tells the main process.)
- ``stream_route``: admission and the first chunk before the 200, so an overloaded stream is a
  real 503, and leaving the stream early frees its slot (Starlette cancels the body on disconnect).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import BaseModel
from starlette.responses import StreamingResponse

from isolated_api import IPC, IPCChannel, IPCError


@dataclass
class Job:
    id: str
    text: str


@dataclass
class JobDone:
    id: str
    text: str


@dataclass
class StreamJob:
    id: str
    text: str
    count: int


@dataclass
class Token:
    id: str
    text: str
    is_final: bool = False


class JobBody(BaseModel):
    text: str = ""
    timeout: float | None = None


class StreamBody(BaseModel):
    text: str = ""
    count: int = 1


class ClientGoneError(IPCError):
    """The client closed the connection before the reply came; nobody reads this answer."""

    # nginx's "client closed request": never seen by the client, but honest in access logs.
    status_code = 499


async def _client_disconnected(request: Request) -> None:
    # Once the body is read, uvicorn's receive() blocks until the client disconnects (or the
    # response completes): no polling.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def submit_unless_disconnected(
    request: Request, channel: IPCChannel, message: Any, *, timeout: float | None = None
) -> Any:
    """``channel.submit(message, timeout)``, abandoned with ``ClientGoneError`` if the HTTP client
    disconnects first. Either way the request's slot is free when this returns or raises."""
    submit = asyncio.ensure_future(channel.submit(message, timeout))
    watch = asyncio.ensure_future(_client_disconnected(request))
    try:
        await asyncio.wait((submit, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # A reply, the client leaving or this handler being cancelled: neither task may outlive it.
        watch.cancel()
        if not submit.done():
            submit.cancel()
            # Let the cancelled submit run its ``finally`` (which frees the slot) before going on.
            await asyncio.wait((submit,))
    if submit.cancelled():
        raise ClientGoneError(f"the client disconnected before the reply to {message.id!r}")
    return submit.result()


async def job_route(body: JobBody, request: Request, channel: IPC) -> dict[str, str]:
    reply = await submit_unless_disconnected(request, channel, Job(uuid.uuid4().hex, body.text), timeout=body.timeout)
    return {"text": reply.text}


async def stream_route(body: StreamBody, channel: IPC) -> StreamingResponse:
    """NDJSON, one line per chunk. Admission and the first chunk happen before the 200 is sent."""
    stream = channel.submit_streaming(StreamJob(uuid.uuid4().hex, body.text, body.count))
    first = await anext(stream)

    async def lines() -> AsyncIterator[bytes]:
        try:
            yield json.dumps({"text": first.text}).encode() + b"\n"
            async for chunk in stream:
                yield json.dumps({"text": chunk.text}).encode() + b"\n"
        finally:
            await stream.aclose()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def load_route(channel: IPC) -> dict[str, int]:
    return {
        "pending": channel.pending_count,
        "max_pending": channel.max_pending,
        "rejected": channel.rejected_count,
        "dropped": channel.dropped_count,
    }
