"""Examples of what ``.routes`` takes besides plain routes: CORS (``.with_cors``), ASGI
middleware, exception handlers, an ``APIRouter`` and a response model; and a route answered by the
main process, whose replies (errors included) carry the CORS headers too. All at module level:
under ``spawn`` the HTTP child imports them by name."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from isolated_api import IPC, ErrorReply

TRAIL_HEADER = "x-trail"


class TagMiddleware:
    """Plain ASGI middleware (not ``BaseHTTPMiddleware``, which breaks streaming). Adds its tag as
    one more ``x-trail`` header on the request on the way in and on the response on the way out,
    so the order of the headers tells the order of the middleware."""

    def __init__(self, app: ASGIApp, tag: str) -> None:
        self.app = app
        self.header = (TRAIL_HEADER.encode(), tag.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = {**scope, "headers": [*scope["headers"], self.header]}

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_tagged)


class OtherTagMiddleware(TagMiddleware):
    """The same behaviour under another class: the order must come from registration."""


async def trail_route(request: Request) -> dict[str, list[str]]:
    """Reports the tags the request collected on its way in."""
    return {"trail": request.headers.getlist(TRAIL_HEADER)}


async def hello_route() -> dict[str, str]:
    return {"hello": "world"}


class TeapotError(Exception):
    """Raised by a route; ``teapot_handler`` turns it into a 418."""

    def __init__(self, item: str) -> None:
        super().__init__(item)
        self.item = item


async def teapot_route(item: str) -> dict[str, str]:
    raise TeapotError(item)


async def teapot_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TeapotError)
    return JSONResponse({"error": "teapot", "item": exc.item}, status_code=418)


async def not_found_handler(request: Request, exc: Exception) -> Response:
    """Registered for status 404: both unknown paths and ``HTTPException(404)`` come here."""
    return JSONResponse({"missing": request.url.path}, status_code=404)


router = APIRouter(tags=["items"])


@router.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, int]:
    if item_id == 0:
        raise HTTPException(status_code=404, detail="no item 0")
    return {"item_id": item_id}


class PublicUser(BaseModel):
    id: int
    name: str


async def user_route(user_id: int) -> dict[str, Any]:
    # More than the response model declares: the model must filter the secret out.
    return {"id": user_id, "name": "ada", "password": "hunter2", "email": "ada@example.com"}


@dataclass
class Upper:
    id: str
    text: str
    fail_status: int | None = None


@dataclass
class UpperDone:
    id: str
    text: str


async def upper_route(body: dict[str, Any], channel: IPC) -> dict[str, str]:
    """POST {"text", "fail_status"?} -> the main process upper-cases the text, or refuses it."""
    reply = await channel.submit(Upper(uuid.uuid4().hex, str(body.get("text", "")), body.get("fail_status")))
    return {"text": reply.text}


def answer_upper(request: Upper) -> UpperDone | ErrorReply:
    """The main process's side of ``upper_route``."""
    if request.fail_status is not None:
        return ErrorReply(request.id, f"refused {request.text!r}", request.fail_status)
    return UpperDone(request.id, request.text.upper())
