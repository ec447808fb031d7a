"""The large payloads slice: an image goes up as raw bytes and a processed image comes back.

HTTP child:   ``POST /images`` (``Content-Type: application/octet-stream``) reads the body with
``await request.body()``, ``POST /images/stream`` with ``request.stream()`` (chunk by chunk, into
one buffer), and submits ``Image(id, data)``: the bytes go to the main process as ``bytes``, never
as JSON or base64. The reply's ``data`` is sent back as ``application/octet-stream``.
Main process: ``process`` stands in for the model (it inverts every byte).

The handlers are module-level so the child can import them under ``spawn``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response

from isolated_api import IPC, Codec, PickleCodec, ServerBuilder

OCTET_STREAM = "application/octet-stream"
# What one upload may be (the server's body limit; with_max_message_size must hold it too).
MAX_IMAGE = 32 * 1024 * 1024
INVERT = bytes(255 - value for value in range(256))


@dataclass
class Image:
    id: str
    data: bytes


@dataclass
class Processed:
    id: str
    data: bytes


async def upload_route(request: Request, channel: IPC) -> Response:
    """The whole body at once: one ``bytes``, handed on as it is."""
    processed = await channel.submit(Image(uuid.uuid4().hex, await request.body()))
    return Response(content=processed.data, media_type=OCTET_STREAM)


async def streamed_upload_route(request: Request, channel: IPC) -> Response:
    """The body as it arrives (a route could check or hash it on the way), gathered into one
    buffer and handed on as ``bytes``."""
    processed = await channel.submit(Image(uuid.uuid4().hex, await gather(request)))
    return Response(content=processed.data, media_type=OCTET_STREAM)


async def gather(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    return bytes(body)


def process(image: Image) -> Processed:
    """The stand-in model: every byte inverted (a fresh ``bytes`` as large as the image)."""
    return Processed(image.id, image.data.translate(INVERT))


def build(request_q: Any, response_q: Any, *, codec: Codec | None = None, shared: bool = False) -> ServerBuilder:
    """The server: the two routes, a body limit of ``MAX_IMAGE``, and shared payloads if asked.
    With a ``MsgspecCodec`` (of ``wire.ImageWire`` and ``wire.ProcessedWire``) the routes submit
    those instead."""
    codec = codec or PickleCodec()
    if isinstance(codec, PickleCodec):
        upload, streamed = upload_route, streamed_upload_route
    else:
        from .wire import streamed_upload_wire_route, upload_wire_route

        upload, streamed = upload_wire_route, streamed_upload_wire_route
    subprocess = (
        ServerBuilder("large-payloads")
        .routes.with_route("/images", upload, methods=["POST"])
        .with_route("/images/stream", streamed, methods=["POST"])
        .done()
        .uvicorn.with_max_body_size(MAX_IMAGE)
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .with_codec(codec)
    )
    if shared:
        # Room for two of the largest images each way; a third waits on the pipes.
        subprocess = subprocess.with_shared_payloads(min_size=64 * 1024, arena_size=4 * MAX_IMAGE + (1 << 20))
    return subprocess.done()
