"""`channel: IPC` reaches the channel without FastAPI solving a dependency per request (routes
registered through the builder), and behaves as the dependency does: same OpenAPI document, a
503 in direct mode, overrides honoured, a handler's own Request untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel

from isolated_api import IPC, ServerBuilder
from isolated_api.worker.dependencies import direct_channel, get_ipc_channel


class Item(BaseModel):
    text: str


class FakeChannel:
    def __init__(self, name: str) -> None:
        self.name = name

    async def submit(self, request: Any) -> str:
        return f"{self.name}:{request}"


async def shout(item: Item, channel: IPC, loud: bool = False) -> dict[str, str]:
    """Shouts through the channel."""
    reply = await channel.submit(item.text.upper() if loud else item.text)
    return {"reply": str(reply)}


async def with_own_request(request: Request, channel: IPC) -> dict[str, str]:
    return {"reply": str(await channel.submit(request.url.path)), "same": str(request.app.title)}


def sync_shout(channel: IPC) -> dict[str, str]:
    return {"reply": "sync"}


def _app(*routes: tuple[str, Any]) -> FastAPI:
    b = ServerBuilder("deps").with_title("deps").routes
    for path, handler in routes:
        b.with_route(path, handler, methods=["POST"])
    return b.done().build().app


def _post(app: FastAPI, path: str, body: dict[str, Any] | None = None, **params: Any) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://deps") as client:
            return await client.post(path, json=body, params=params)

    return asyncio.run(call())


def test_dependencies_ipc_routes_skip_fastapis_dependency_solving() -> None:
    """Steps: register an async handler taking `channel: IPC`, and a sync one. Expect the async
    route's dependant to have no sub-dependency (the request is handed over instead), and the sync
    handler registered as written."""
    assert direct_channel(sync_shout) is sync_shout
    routes = {r.path: r for r in _app(("/shout", shout), ("/sync", sync_shout)).routes if isinstance(r, APIRoute)}
    assert routes["/shout"].dependant.dependencies == []
    assert routes["/shout"].dependant.request_param_name is not None
    assert [d.call for d in routes["/sync"].dependant.dependencies] == [get_ipc_channel]


def test_dependencies_ipc_routes_keep_the_openapi_document_of_the_handler_as_written() -> None:
    ours = _app(("/shout", shout)).openapi()
    plain = FastAPI(title="deps")
    # As the builder registers routes: response_model as given to with_route (None by default).
    plain.add_api_route("/shout", shout, methods=["POST"], response_model=None)
    assert ours["paths"]["/shout"] == plain.openapi()["paths"]["/shout"]
    assert ours["components"]["schemas"]["Item"] == plain.openapi()["components"]["schemas"]["Item"]


def test_dependencies_ipc_in_direct_mode_is_503_and_an_override_is_honoured() -> None:
    """Steps: call the IPC route of a direct-mode app; override get_ipc_channel with a function of
    no argument, then with one taking the request. Expect 503 naming the missing channel, then
    each override's channel used, with the handler's own parameters as sent."""
    app = _app(("/shout", shout), ("/own", with_own_request))
    refused = _post(app, "/shout", {"text": "hi"})
    assert refused.status_code == 503 and "no IPC channel" in refused.json()["detail"]

    app.dependency_overrides[get_ipc_channel] = lambda: FakeChannel("plain")
    assert _post(app, "/shout", {"text": "hi"}, loud=True).json() == {"reply": "plain:HI"}

    async def per_request(request: Request) -> FakeChannel:
        return FakeChannel(request.method)

    app.dependency_overrides[get_ipc_channel] = per_request
    assert _post(app, "/shout", {"text": "hi"}).json() == {"reply": "POST:hi"}
    assert _post(app, "/own").json() == {"reply": "POST:/own", "same": "deps"}
