"""Health checks as a user gets them: the built-in routes are on by default (``/health/live``,
``/health/ready``; ``.routes.with_health(...)`` moves them or changes the readiness deadline,
``.without_health()`` drops them). Liveness says the HTTP worker is up; readiness says the main
process reads its requests (none waits unread past the deadline; a long one being served is
fine), so a load balancer stops sending traffic when it stalls. ``server.health()`` gives the
same facts, and the same verdict, in the main process.

The app's own routes below ask the main process for work; the child imports them by name under
``spawn``, so they live at module level."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from isolated_api import IPC, new_request_id


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
    """Answers without touching the main process."""
    return {"pong": True, "pid": os.getpid()}


def answer_upper(request: Work) -> Done:
    """The main process's side: what it puts on response_q for each request."""
    return Done(request.id, request.text.upper())
