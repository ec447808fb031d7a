"""Graceful shutdown as a user writes it: routes whose work the main process does (and may hold
for a while), a lifespan that releases its resources only once the last request has finished, and
a route that misbehaves (ignores SIGTERM, blocks the event loop) so the hard stop can be seen.

``server.stop(timeout)`` or SIGTERM to a worker: new requests get 503 + Retry-After, in-flight
ones finish, the lifespan's clean-up runs, the worker exits 0; past ``timeout`` it is killed.
The child imports everything here by name under ``spawn``, so it all lives at module level."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from isolated_api import IPC, new_request_id

# Where the lifespan records its start-up and its clean-up, one line each ("started <pid>").
LIFESPAN_RECORD_ENV = "GRACEFUL_SHUTDOWN_RECORD"


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
    """POST {"text"} -> the main process upper-cases the text (as slowly as it likes)."""
    reply = await channel.submit(Work(new_request_id(), str(body.get("text", ""))))
    return {"text": reply.text, "main_pid": reply.pid}


async def ping_route() -> dict[str, Any]:
    """Answers without touching the main process."""
    return {"pong": True, "pid": os.getpid()}


async def block_loop_route() -> dict[str, bool]:
    """Misbehaves on purpose: ignores SIGTERM and blocks the worker's event loop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)  # noqa: ASYNC251 - the point is to block the loop
    return {"never": True}


def _record(event: str) -> None:
    path = os.environ.get(LIFESPAN_RECORD_ENV)
    if path:
        with open(path, "a") as record:
            record.write(f"{event} {os.getpid()}\n")


@asynccontextmanager
async def resources_lifespan(app: Any) -> AsyncIterator[None]:
    """Opens what the routes need at start-up, releases it at shutdown: the code after ``yield``
    runs once the drain is over, so no request still in flight loses its resources."""
    _record("started")
    yield
    _record("stopped")


def answer_upper(request: Work) -> Done:
    """The main process's side: what it puts on response_q for each request."""
    return Done(request.id, request.text.upper())
