"""Unary requests, as a user writes them: a route submits one message and awaits its reply.

HTTP child:   POST /upper -> ``await channel.submit(Upper(...))`` -> the reply's fields as JSON.
Main process: read ``Upper`` from ``request_q``, put ``UpperDone`` (same ``id``) on ``response_q``,
or an ``ErrorReply`` whose status the client gets.

What the route doesn't write: a missing reply is a 504, a full channel a 503, an invalid body a
422 (the library's handlers). The handlers are module-level so the child can import them under
``spawn``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from isolated_api import IPC, ErrorReply


@dataclass
class Upper:
    """The request: upper-case ``text``. ``delay`` and ``fail_status`` are knobs of the stand-in
    main process that the tests drive."""

    id: str
    text: str = ""
    delay: float = 0.0
    fail_status: int | None = None


@dataclass
class UpperDone:
    id: str
    text: str
    # Which process answered: the tests prove the reply came from the main process.
    pid: int = field(default_factory=os.getpid)


async def upper_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    """POST {"text", "delay"?, "fail_status"?} -> the main process upper-cases the text."""
    reply = await channel.submit(
        Upper(uuid.uuid4().hex, str(body.get("text", "")), float(body.get("delay", 0.0)), body.get("fail_status"))
    )
    return {"text": reply.text, "main_pid": reply.pid}


async def ping_route() -> dict[str, Any]:
    """Answers in the HTTP child without touching the main process."""
    return {"pong": True, "pid": os.getpid()}


async def pending_route(channel: IPC) -> dict[str, int]:
    """The channel's counters, as the child sees them."""
    return {"pending": channel.pending_count, "dropped": channel.dropped_count, "rejected": channel.rejected_count}


class CountBody(BaseModel):
    n: int


async def count_route(body: CountBody) -> dict[str, int]:
    """A typed body: what fails validation is a 422 before any message is sent."""
    return {"n": body.n}


def answer_upper(request: Upper) -> UpperDone | ErrorReply:
    """The main process's answer: honour ``delay`` and ``fail_status``, else upper-case."""
    if request.delay:
        time.sleep(request.delay)
    if request.fail_status is not None:
        return ErrorReply(request.id, f"refused {request.text!r}", request.fail_status)
    return UpperDone(request.id, request.text.upper())


def held_until(release: threading.Event) -> Callable[[Upper], UpperDone | ErrorReply]:
    """``answer_upper`` once ``release`` is set: deterministic "slow work" for the tests."""

    def behaviour(request: Upper) -> UpperDone | ErrorReply:
        release.wait(60)
        return answer_upper(request)

    return behaviour
