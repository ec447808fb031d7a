"""Module-level routes and messages for the workers tests (the workers import them under spawn)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from isolated_api import IPC
from tests.helpers import Work, new_id


@dataclass
class Chunk:
    id: str
    index: int
    is_final: bool = False


async def whoami_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(Work(new_id(), str(body.get("text", ""))))
    return {"text": reply.text, "worker_pid": os.getpid()}


async def collect_stream_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    """Asks the main process for a stream and returns the chunk indexes in arrival order."""
    indexes = [chunk.index async for chunk in channel.submit_streaming(Work(new_id(), str(body["count"])))]
    return {"indexes": indexes, "worker_pid": os.getpid()}
