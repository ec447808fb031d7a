"""Supervision as a user writes it: an HTTP API whose routes ask the main process for work, a
lifespan that can refuse start-up (a model that fails to load), and a route that kills its own
worker (a crash in native code). With ``.subprocess.with_auto_restart(...)`` the server replaces a
worker that dies (at once if it had served; after a growing delay in a crash loop) and gives up,
visibly, only on one that keeps failing at start-up.

The child imports everything here by name under ``spawn``, so it all lives at module level."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from isolated_api import IPC, new_request_id

# While the file named here exists, a worker's start-up fails (the lifespan raises).
FAIL_MARKER_ENV = "SUPERVISION_FAIL_MARKER"


@dataclass
class Work:
    id: str
    text: str


@dataclass
class Done:
    id: str
    text: str
    pid: int = field(default_factory=os.getpid)


async def upper_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    """POST {"text"} -> the main process upper-cases the text."""
    reply = await channel.submit(Work(new_request_id(), str(body.get("text", ""))))
    return {"text": reply.text, "main_pid": reply.pid}


async def ping_route() -> dict[str, Any]:
    """Answers without touching the main process: tells which worker is serving."""
    return {"pong": True, "pid": os.getpid()}


async def crash_route() -> dict[str, bool]:
    """Dies the way a segfault in a native library or the OOM killer ends a worker: no clean-up."""
    os.kill(os.getpid(), signal.SIGKILL)
    return {"never": True}  # pragma: no cover


@asynccontextmanager
async def fail_if_marked(app: Any) -> AsyncIterator[None]:
    """Start-up fails while the file named by $SUPERVISION_FAIL_MARKER exists."""
    marker = os.environ.get(FAIL_MARKER_ENV)
    if marker and os.path.exists(marker):  # noqa: ASYNC240 - one stat at start-up
        raise RuntimeError("start-up refused: the marker file exists")
    yield


def answer_upper(request: Work) -> Done:
    """The main process's side: what it puts on response_q for each request."""
    return Done(request.id, request.text.upper())
