"""The metrics use case's server side: its messages and routes (module-level: the HTTP workers
import them under spawn) and the main process's answer to them. ``GET /metrics`` itself comes
with every server built by ``ServerBuilder``; nothing here defines it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from isolated_api import IPC


@dataclass
class Echo:
    """Unary work: the main process answers with the text upper-cased."""

    id: str
    text: str = ""


@dataclass
class Echoed:
    id: str
    text: str


@dataclass
class CountTo:
    """Streamed work: the main process answers with ``count`` chunks."""

    id: str
    count: int


@dataclass
class Chunk:
    id: str
    index: int
    is_final: bool = False


async def whoami_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(Echo(uuid.uuid4().hex, str(body.get("text", ""))))
    return {"text": reply.text, "worker_pid": os.getpid()}


async def collect_stream_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    """Asks the main process for a stream and returns the chunk indexes in arrival order."""
    request = CountTo(uuid.uuid4().hex, int(body["count"]))
    indexes = [chunk.index async for chunk in channel.submit_streaming(request)]
    return {"indexes": indexes, "worker_pid": os.getpid()}


async def ping_route() -> dict[str, Any]:
    """Answers without the main process."""
    return {"pong": True, "pid": os.getpid()}


def main_side(response_q: Any) -> Callable[[Any], Any]:
    """What the main process does with each request read from ``request_q``: a stream's chunks go
    on ``response_q`` one by one (and nothing is returned); a unary request's reply is returned."""

    def answer(request: Any) -> Any:
        if isinstance(request, CountTo):
            for index in range(request.count):
                response_q.put(Chunk(request.id, index, is_final=index == request.count - 1))
            return None
        return Echoed(request.id, request.text.upper())

    return answer
