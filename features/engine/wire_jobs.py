"""msgspec request types, handlers and routes for an engine behind ``MsgspecCodec`` (module-level:
the HTTP child imports the routes and the codec's types). The codec lists them beside the engine's
own wire types, ``MsgspecCodec(Shout, Spell, *ENGINE_WIRE_TYPES)``; features/engine/test_engine_wire.py
serves them end to end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec

from isolated_api import IPC


class Shout(msgspec.Struct, tag=True):
    id: str
    text: str


class Spell(msgspec.Struct, tag=True):
    id: str
    word: str


def shout(request: Shout) -> dict[str, Any]:
    if request.text == "opaque":
        return {"value": object()}  # MessagePack can't carry it: that one request fails with 500
    return {"text": request.text.upper(), "length": len(request.text)}


def spell(request: Spell) -> Iterator[str]:
    yield from request.word


async def shout_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(Shout(uuid.uuid4().hex, str(body["text"])))
    return {"type": type(reply).__name__, "data": reply.data}


async def spell_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    chunks = [c async for c in channel.submit_streaming(Spell(uuid.uuid4().hex, str(body["word"])))]
    return {"data": [c.data for c in chunks], "final": [c.is_final for c in chunks]}
