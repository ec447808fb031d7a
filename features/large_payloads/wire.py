"""The slice's messages for ``MsgspecCodec``: the same fields, as tagged ``msgspec.Struct`` types.
msgspec carries a ``bytes`` field as MessagePack binary, not base64; with shared payloads a whole
encoded message of at least ``min_size`` crosses in the arena."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from fastapi import Request, Response

from isolated_api import IPC, MsgspecCodec

from .images import INVERT, OCTET_STREAM, gather


class ImageWire(msgspec.Struct, tag=True):
    id: str
    data: bytes


class ProcessedWire(msgspec.Struct, tag=True):
    id: str
    data: bytes


CODEC_TYPES = (ImageWire, ProcessedWire)


def codec() -> MsgspecCodec:
    return MsgspecCodec(*CODEC_TYPES)


async def upload_wire_route(request: Request, channel: IPC) -> Response:
    processed = await channel.submit(ImageWire(uuid.uuid4().hex, await request.body()))
    return Response(content=processed.data, media_type=OCTET_STREAM)


async def streamed_upload_wire_route(request: Request, channel: IPC) -> Response:
    processed = await channel.submit(ImageWire(uuid.uuid4().hex, await gather(request)))
    return Response(content=processed.data, media_type=OCTET_STREAM)


def process_wire(server_codec: MsgspecCodec, message: Any) -> bytes:
    """The main process's side with msgspec: ``request_q`` carries encoded bytes."""
    image = server_codec.decode(message)
    return server_codec.encode(ProcessedWire(image.id, image.data.translate(INVERT)))
