"""isolated_api: a FastAPI + Uvicorn HTTP API in a child process, linked to the main process
(where the heavy work lives) by multiprocessing queues.

The facade: everything a user imports lives here; the implementation is in ``features/``.
"""

from typing import TYPE_CHECKING, Any

from features.codecs.codec import Codec, CodecError, MsgspecCodec, PickleCodec
from features.configuration.settings import ApiConfig, ConfigError, IPCConfig, UvicornConfig
from features.engine.context import RequestContext
from features.engine.engine import Engine
from features.engine.errors import EngineError
from features.engine.messages import HealthPing, HealthStatus, Result, StreamChunk
from features.ipc.channel import IPCChannel
from features.ipc.chunk_stream import ChunkStream, merge_text
from features.ipc.errors import (
    ChannelClosedError,
    DuplicateRequestIdError,
    IPCError,
    IPCTimeoutError,
    OverloadedError,
    QueueFullError,
    RemoteError,
    StreamOverflowError,
)
from features.ipc.messages import CancelRequest, ErrorReply
from features.ipc.request_ids import new_request_id
from features.reply_batching.reply_batcher import ReplyBatcher
from features.streaming.sse import sse_response
from features.subprocess_runtime.manager import SubprocessManager
from features.unary.dependencies import IPC, get_ipc_channel
from isolated_api._builder import RouteConfigurer, ServerBuilder, SubprocessConfigurer, UvicornConfigurer
from isolated_api._recipe import BuildError
from isolated_api._server import Server

if TYPE_CHECKING:
    from features.appinfra_plugin.plugin import ServerPlugin as ServerPlugin


def __getattr__(name: str) -> Any:
    # ServerPlugin needs the optional extra isolated_api[appinfra]: imported on first use.
    if name == "ServerPlugin":
        from features.appinfra_plugin.plugin import ServerPlugin as ServerPlugin

        return ServerPlugin
    raise AttributeError(f"module 'isolated_api' has no attribute {name!r}")


__all__ = [
    "IPC",
    "ApiConfig",
    "BuildError",
    "CancelRequest",
    "ChannelClosedError",
    "ChunkStream",
    "Codec",
    "CodecError",
    "ConfigError",
    "DuplicateRequestIdError",
    "Engine",
    "EngineError",
    "ErrorReply",
    "HealthPing",
    "HealthStatus",
    "IPCChannel",
    "IPCConfig",
    "IPCError",
    "IPCTimeoutError",
    "MsgspecCodec",
    "OverloadedError",
    "PickleCodec",
    "QueueFullError",
    "RemoteError",
    "ReplyBatcher",
    "RequestContext",
    "Result",
    "RouteConfigurer",
    "Server",
    "ServerBuilder",
    "StreamChunk",
    "StreamOverflowError",
    "SubprocessConfigurer",
    "SubprocessManager",
    "UvicornConfig",
    "UvicornConfigurer",
    "get_ipc_channel",
    "merge_text",
    "new_request_id",
    "sse_response",
]
