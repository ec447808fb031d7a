"""msgspec request types and routes for batching behind ``MsgspecCodec`` (local and remote
engines). Module-level: the HTTP child imports the routes and the codec's types."""

from __future__ import annotations

import json
import uuid
from typing import Any

import msgspec
from starlette.responses import Response

from isolated_api import ENGINE_WIRE_TYPES, IPC, Done, MsgspecCodec, sse_response


class WireEmbed(msgspec.Struct, tag=True):
    id: str
    text: str


class WireGenerate(msgspec.Struct, tag=True):
    id: str
    tokens: int


CODEC = MsgspecCodec(WireEmbed, WireGenerate, *ENGINE_WIRE_TYPES)


async def wire_embed_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(WireEmbed(uuid.uuid4().hex, str(body["text"])))
    return {"data": reply.data}


async def wire_generate_route(body: dict[str, Any], channel: IPC) -> Response:
    stream = channel.submit_streaming(WireGenerate(uuid.uuid4().hex, int(body["tokens"])))
    return await sse_response(stream, lambda c: json.dumps({"data": c.data, "final": c.is_final}))


def embed_all(requests: list[WireEmbed]) -> list[dict[str, Any]]:
    # "opaque": a result MessagePack can't carry, which fails that member alone.
    return [{"text": object() if r.text == "opaque" else r.text.upper(), "batch": len(requests)} for r in requests]


class CountingStepper:
    """Stream ``k`` of a request: the numbers 0..tokens-1, then ``Done()``."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}

    def join(self, requests: list[WireGenerate]) -> None:
        for r in requests:
            self.sent[r.id] = 0

    def step(self, active: list[WireGenerate]) -> list[Any]:
        out: list[Any] = []
        for r in active:
            k = self.sent[r.id]
            self.sent[r.id] = k + 1
            out.append(Done() if k == r.tokens else k)
        return out

    def leave(self, request: WireGenerate, why: str) -> None:
        del self.sent[request.id]
