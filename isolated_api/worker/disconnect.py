"""Cancels a request's handler when its client disconnects.

Starlette only notices a disconnect when a response is being sent, so a handler awaiting the main
process would keep it working for a client that is gone. This plain ASGI middleware owns the
connection's ``receive``: one pump task reads every message into a buffer the app reads from,
and when ``http.disconnect`` arrives before the response is complete it cancels the handler's
task. The channel then settles the request (``finally``) and the relay puts a ``CancelRequest``
on ``request_q``. One extra task per request, so it is on only with ``with_cancellation()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from isolated_api.shared.messages import CLIENT_DISCONNECTED


class DisconnectCancelMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handler = asyncio.current_task()
        assert handler is not None
        inbox: asyncio.Queue[Message] = asyncio.Queue()
        state: dict[str, Any] = {"responded": False, "disconnected": False}

        async def pump() -> None:
            while True:
                message = await receive()
                await inbox.put(message)
                if message["type"] == "http.disconnect":
                    # uvicorn also reports a finished response this way; only a real early
                    # disconnect cancels.
                    if not state["responded"]:
                        state["disconnected"] = True
                        handler.cancel(CLIENT_DISCONNECTED)
                    return

        async def send_tracking(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                state["responded"] = True
            await send(message)

        pump_task = asyncio.get_running_loop().create_task(pump())
        try:
            await self.app(scope, inbox.get, send_tracking)
        except asyncio.CancelledError:
            if not state["disconnected"]:
                raise
            # We cancelled it because the client is gone: nothing to answer, nobody to tell.
            handler.uncancel()
        finally:
            pump_task.cancel()
