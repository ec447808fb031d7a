"""Module-level message types and routes of the codecs use case (the HTTP worker imports them)."""

from __future__ import annotations

import uuid

import msgspec

from isolated_api import IPC


class Ask(msgspec.Struct, tag=True):
    id: str
    text: str
    numbers: list[int] = []


class Answer(msgspec.Struct, tag=True):
    id: str
    text: str
    total: int


class Untagged(msgspec.Struct):
    id: str


async def ask_route(body: dict[str, str], channel: IPC) -> dict[str, object]:
    answer = await channel.submit(Ask(uuid.uuid4().hex, body["text"], [1, 2, 3]))
    return {"text": answer.text, "total": answer.total}


async def bad_id_route(channel: IPC) -> dict[str, object]:
    await channel.submit(Ask(("tuple", "id"), "x"))  # type: ignore[arg-type]
    return {}
