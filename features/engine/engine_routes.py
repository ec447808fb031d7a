"""HTTP-side routes in front of the engine (module-level: the child imports them).
``POST /run/{op}`` submits one request and returns ``{"data": reply.data}``; ``POST /stream/{op}``
collects a whole stream and returns its chunks' data and final flags; ``GET /engine-health``
asks the engine itself."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from fastapi import HTTPException

from isolated_api import IPC, HealthPing

from .engine_jobs import Count, CountAsync, Fail, Hold, Reverse, Upper

_OPS: dict[str, type] = {
    "upper": Upper,
    "reverse": Reverse,
    "fail": Fail,
    "count": Count,
    "count_async": CountAsync,
    "hold": Hold,
}


def _request(op: str, body: dict[str, Any]) -> Any:
    kind = _OPS.get(op)
    if kind is None:
        raise HTTPException(404, f"unknown op {op!r}")
    return kind(id=uuid.uuid4().hex, **body)


async def run_route(op: str, body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(_request(op, body))
    return {"data": reply.data}


async def stream_route(op: str, body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    chunks = [chunk async for chunk in channel.submit_streaming(_request(op, body))]
    return {"data": [c.data for c in chunks], "final": [c.is_final for c in chunks]}


async def health_route(channel: IPC) -> dict[str, Any]:
    status = await channel.submit(HealthPing(uuid.uuid4().hex))
    return {k: v for k, v in dataclasses.asdict(status).items() if k != "id"}
