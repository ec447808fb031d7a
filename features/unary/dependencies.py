"""How a route reaches the channel: ``channel: IPC`` in its signature, or
``request.app.state.ipc_channel``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from features.ipc.channel import IPCChannel
from features.ipc.errors import ChannelClosedError


# async on purpose: FastAPI runs a plain `def` dependency in a thread pool, a thread hop per request.
async def get_ipc_channel(request: Request) -> IPCChannel:
    channel = getattr(request.app.state, "ipc_channel", None)
    if channel is None:
        # Direct mode has no main-process link: say so instead of an AttributeError.
        raise ChannelClosedError("this server has no IPC channel (configure .subprocess.with_ipc(...))")
    assert isinstance(channel, IPCChannel)
    return channel


IPC = Annotated[IPCChannel, Depends(get_ipc_channel)]
