"""Several HTTP workers as a user writes them: ``.uvicorn.with_workers(n)`` starts n worker
processes on one port, all linked to the one pair of queues of the main process. The routes below
ask the main process for a reply or a stream and say which worker served them; the main process
answers each request with the request's own id, and the server routes the reply to the worker
waiting for it. The workers import these by name under ``spawn``, so they live at module level."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass
class Chunk:
    """One piece of a streamed answer; the last one says so."""

    id: str
    index: int
    is_final: bool = False


async def whoami_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    """POST {"text"} -> the main process's answer, and the pid of the worker that served it."""
    reply = await channel.submit(Work(new_request_id(), str(body.get("text", ""))))
    return {"text": reply.text, "worker_pid": os.getpid()}


async def collect_stream_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    """Asks the main process for a stream and returns the chunk indexes in arrival order."""
    request = Work(new_request_id(), str(body["count"]))
    indexes = [chunk.index async for chunk in channel.submit_streaming(request)]
    return {"indexes": indexes, "worker_pid": os.getpid()}


def answer_upper(request: Work) -> Done:
    """The main process's side for ``whoami_route``: what it puts on response_q."""
    return Done(request.id, request.text.upper())


def stream_chunks(request: Work) -> list[Chunk]:
    """The main process's side for ``collect_stream_route``: ``int(request.text)`` chunks, each put
    on response_q as it is ready, the last one final."""
    count = int(request.text)
    return [Chunk(request.id, index, is_final=index == count - 1) for index in range(count)]
