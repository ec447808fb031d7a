"""isolated_api: a FastAPI + Uvicorn HTTP API in a child process, linked to the main process
(where the heavy work lives) by multiprocessing queues.

The facade: everything a user imports lives here. The implementation is grouped by the process
each part runs in: ``worker`` (the HTTP worker), ``main`` (the main process), ``engine``, ``shared``
(wire format, codecs, config, errors) and ``server`` (the builder and the Server that join them).
"""

from typing import TYPE_CHECKING, Any

from isolated_api.engine.collect import collect
from isolated_api.engine.context import RequestContext
from isolated_api.engine.engine import Engine
from isolated_api.engine.errors import EngineError
from isolated_api.engine.messages import HealthPing, HealthStatus, Result, StreamChunk
from isolated_api.engine.stepping import Done
from isolated_api.main.reply_batcher import ReplyBatcher
from isolated_api.main.subprocess_manager import SubprocessManager
from isolated_api.main.supervisor import StartupError, UnguardedMainError
from isolated_api.server.builder import (
    EnginesConfigurer,
    RouteConfigurer,
    ServerBuilder,
    SubprocessConfigurer,
    UvicornConfigurer,
)
from isolated_api.server.ipc_facts import IPCFacts
from isolated_api.server.listener import PortInUseError
from isolated_api.server.server import Server
from isolated_api.shared.codecs import Codec, CodecError, MsgspecCodec, PickleCodec
from isolated_api.shared.config import (
    ApiConfig,
    ConfigError,
    IPCConfig,
    OutboxLimits,
    RequestLimits,
    SharedPayloads,
    UvicornConfig,
)
from isolated_api.shared.engines import EnginesConfig
from isolated_api.shared.errors import (
    ChannelClosedError,
    DuplicateRequestIdError,
    IPCError,
    IPCTimeoutError,
    MessageTooLargeError,
    OverloadedError,
    QueueFullError,
    RemoteError,
    ReplyTooLargeError,
    StreamOverflowError,
)
from isolated_api.shared.heartbeat import Heartbeat
from isolated_api.shared.messages import CancelRequest, ErrorReply
from isolated_api.shared.recipe import BuildError
from isolated_api.shared.request_ids import new_request_id
from isolated_api.shared.restart_policy import RestartPolicy
from isolated_api.shared.spec import ConflictingSettingsError
from isolated_api.worker.channel import IPCChannel
from isolated_api.worker.chunk_stream import ChunkStream
from isolated_api.worker.dependencies import IPC, get_ipc_channel
from isolated_api.worker.sse import sse_response
from isolated_api.worker.text_merge import TextMerge, merge_text

if TYPE_CHECKING:
    from isolated_api.engine.wire import ENGINE_WIRE_TYPES as ENGINE_WIRE_TYPES
    from isolated_api.main.engine_host import EngineBindError as EngineBindError
    from isolated_api.main.engine_host import EngineHost as EngineHost
    from isolated_api.server.appinfra_plugin import ServerPlugin as ServerPlugin


def __getattr__(name: str) -> Any:
    # ServerPlugin needs the optional extra isolated_api[appinfra], ENGINE_WIRE_TYPES the optional
    # msgspec, EngineHost the optional pyzmq: imported on first use, so `import isolated_api` works
    # with the runtime dependencies only.
    if name == "ServerPlugin":
        from isolated_api.server.appinfra_plugin import ServerPlugin as ServerPlugin

        return ServerPlugin
    if name in ("EngineHost", "EngineBindError"):
        # ZeroMQ (the optional extra isolated_api[remote]) is imported only by those who serve or
        # reach remote engines.
        from isolated_api.shared.extras import require_remote

        require_remote(name)
        from isolated_api.main import engine_host

        return getattr(engine_host, name)
    if name == "ENGINE_WIRE_TYPES":
        try:
            from isolated_api.engine.wire import ENGINE_WIRE_TYPES as ENGINE_WIRE_TYPES
        except ImportError as exc:
            raise ImportError(
                "ENGINE_WIRE_TYPES needs msgspec: pip install 'isolated_api[msgspec]'", name=exc.name
            ) from exc
        return ENGINE_WIRE_TYPES
    raise AttributeError(f"module 'isolated_api' has no attribute {name!r}")


__all__ = [
    "ENGINE_WIRE_TYPES",
    "IPC",
    "ApiConfig",
    "BuildError",
    "CancelRequest",
    "ChannelClosedError",
    "ChunkStream",
    "Codec",
    "CodecError",
    "ConfigError",
    "ConflictingSettingsError",
    "Done",
    "DuplicateRequestIdError",
    "Engine",
    "EngineBindError",
    "EngineError",
    "EngineHost",
    "EnginesConfig",
    "EnginesConfigurer",
    "ErrorReply",
    "HealthPing",
    "HealthStatus",
    "Heartbeat",
    "IPCChannel",
    "IPCConfig",
    "IPCError",
    "IPCFacts",
    "IPCTimeoutError",
    "MessageTooLargeError",
    "MsgspecCodec",
    "OutboxLimits",
    "OverloadedError",
    "PickleCodec",
    "PortInUseError",
    "QueueFullError",
    "RemoteError",
    "ReplyBatcher",
    "ReplyTooLargeError",
    "RequestContext",
    "RequestLimits",
    "RestartPolicy",
    "Result",
    "RouteConfigurer",
    "Server",
    "ServerBuilder",
    "SharedPayloads",
    "StartupError",
    "StreamChunk",
    "StreamOverflowError",
    "SubprocessConfigurer",
    "SubprocessManager",
    "TextMerge",
    "UnguardedMainError",
    "UvicornConfig",
    "UvicornConfigurer",
    "collect",
    "get_ipc_channel",
    "merge_text",
    "new_request_id",
    "sse_response",
]
