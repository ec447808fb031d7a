"""Token streaming as Server-Sent Events: the reference route and the engine side, end to end.

HTTP child:  POST /generate -> ``channel.submit_streaming(Generate(...))`` -> ``sse_response``.
Main process: read ``Generate`` from ``request_q``, put ``Token(id, index, text, is_final)`` on
``response_q`` (``emit_tokens`` below stands in for the model), the last one with ``is_final=True``,
or an ``ErrorReply`` to fail the stream.

The handlers are module-level so the child can import them under ``spawn``. ``Generate`` carries a
few knobs of the stand-in engine (pacing, pauses, failures) that the slice's tests drive.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from isolated_api import IPC, ErrorReply, merge_text, sse_response


@dataclass
class Generate:
    id: str
    prompt: str
    max_tokens: int = 16
    # Stand-in engine knobs: seconds between tokens, a pause after token ``pause_after`` (the
    # engine "thinking"), an ErrorReply instead of token ``fail_at``.
    interval: float = 0.0
    pause_after: int | None = None
    pause: float = 0.0
    fail_at: int | None = None
    fail_status: int = 500


@dataclass
class Token:
    id: str
    index: int
    text: str
    is_final: bool = False


class GenerateBody(BaseModel):
    prompt: str = ""
    max_tokens: int = Field(16, ge=1, le=100_000)
    interval: float = Field(0.0, ge=0, le=5)
    pause_after: int | None = None
    pause: float = Field(0.0, ge=0, le=30)
    fail_at: int | None = None
    fail_status: int = 500


def _generate(body: GenerateBody) -> Generate:
    return Generate(uuid.uuid4().hex, **body.model_dump())


async def generate_route(body: GenerateBody, request: Request, channel: IPC) -> Response:
    """POST /generate -> ``text/event-stream`` of ``Token`` JSON frames. Tokens a slow client
    can't take yet are merged (text concatenated), so it still gets the whole text."""
    stream = channel.submit_streaming(_generate(body), merge=merge_text)
    return await sse_response(stream, request=request)


async def generate_route_quick_keepalive(body: GenerateBody, request: Request, channel: IPC) -> Response:
    """The same with a keep-alive every 0.1 s instead of 15 s, so a test can watch keep-alives."""
    stream = channel.submit_streaming(_generate(body), merge=merge_text)
    return await sse_response(stream, request=request, keepalive=0.1)


async def generate_route_small_buffer(body: GenerateBody, request: Request, channel: IPC) -> Response:
    """The same with an 8-chunk buffer and ``done="[DONE]"``: lets a test see merging under a slow client."""
    stream = channel.submit_streaming(_generate(body), merge=merge_text, buffer_size=8)
    return await sse_response(stream, request=request, done="[DONE]")


async def pending_route(channel: IPC) -> dict[str, int]:
    """GET /pending -> the channel's counters as the child sees them: streams still open, chunks
    dropped (their stream was gone), requests refused by admission."""
    return {"pending": channel.pending_count, "dropped": channel.dropped_count, "rejected": channel.rejected_count}


def token_text(request: Generate, index: int) -> str:
    return f"{request.prompt}{index} "


def emit_tokens(request: Generate, put: Callable[[Any], None], *, before: Callable[[int], None] | None = None) -> None:
    """The stand-in engine, run in the main process: puts ``request.max_tokens`` tokens with
    ``put`` (``response_q.put``). ``before(index)`` runs before each token (tests use it to hold
    the engine at a chosen point)."""
    for index in range(request.max_tokens):
        if before is not None:
            before(index)
        if request.fail_at == index:
            put(ErrorReply(request.id, f"the engine failed at token {index}", request.fail_status))
            return
        if request.interval and index:
            time.sleep(request.interval)
        if request.pause_after is not None and index == request.pause_after + 1:
            time.sleep(request.pause)
        put(Token(request.id, index, token_text(request, index), is_final=index == request.max_tokens - 1))
