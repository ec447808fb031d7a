"""The engine's messages as ``msgspec`` Structs, for servers built with ``MsgspecCodec`` (whose
decoder builds only the types it was given). List them in the codec next to your own types::

    codec = MsgspecCodec(Generate, *ENGINE_WIRE_TYPES)
    server = builder.subprocess.with_ipc(request_q, response_q).with_codec(codec).done().build()
    engine = Engine(request_q, response_q, codec=codec)

Replies then reach routes as ``ResultWire`` / ``StreamChunkWire``: the same ``id``, ``data`` and
``is_final`` as ``Result`` / ``StreamChunk``, with ``data`` as MessagePack carries it (dicts,
lists, strings, numbers). Needs the optional ``msgspec`` package.
"""

from __future__ import annotations

from typing import Any

import msgspec

from isolated_api.engine.messages import HealthPing, HealthStatus, Result, StreamChunk


class ResultWire(msgspec.Struct, tag="isolated_api.engine.Result"):
    id: str | int
    data: Any


class StreamChunkWire(msgspec.Struct, tag="isolated_api.engine.StreamChunk"):
    id: str | int
    data: Any
    is_final: bool = False


class HealthPingWire(msgspec.Struct, tag="isolated_api.engine.HealthPing"):
    id: str | int


class HealthStatusWire(msgspec.Struct, tag="isolated_api.engine.HealthStatus"):
    id: str | int
    running: int
    concurrency: int
    served: int
    failed: int
    cancelled: int


ENGINE_WIRE_TYPES: tuple[type, ...] = (ResultWire, StreamChunkWire, HealthPingWire, HealthStatusWire)


def to_wire(message: Any) -> Any:
    """The Struct form of an engine message; anything else (``ErrorReply``...) as it is."""
    kind = type(message)
    if kind is Result:
        return ResultWire(message.id, message.data)
    if kind is StreamChunk:
        return StreamChunkWire(message.id, message.data, message.is_final)
    if kind is HealthStatus:
        return HealthStatusWire(**{f: getattr(message, f) for f in HealthStatusWire.__struct_fields__})
    return message


def from_wire(message: Any) -> Any:
    """Requests the engine itself answers, back in their plain form."""
    return HealthPing(message.id) if type(message) is HealthPingWire else message
