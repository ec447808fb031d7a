"""The request/reply path between the HTTP process and the main process."""

from features.ipc.channel import IPCChannel
from features.ipc.errors import (
    ChannelClosedError,
    DuplicateRequestIdError,
    IPCError,
    IPCTimeoutError,
    OverloadedError,
    QueueFullError,
    RemoteError,
)
from features.ipc.messages import ErrorReply

__all__ = [
    "ChannelClosedError",
    "DuplicateRequestIdError",
    "ErrorReply",
    "IPCChannel",
    "IPCError",
    "IPCTimeoutError",
    "OverloadedError",
    "QueueFullError",
    "RemoteError",
]
