"""CORS, middleware order, exception handlers, routers and response models, over real HTTP to a
real HTTP child; and the CORS settings ``with_cors`` refuses, which need no child."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from isolated_api import ConfigError, Server
from isolated_api.testing import MainLoop, loopback_builder, running

from .middleware_examples import (
    TRAIL_HEADER,
    OtherTagMiddleware,
    PublicUser,
    TagMiddleware,
    TeapotError,
    hello_route,
    not_found_handler,
    router,
    teapot_handler,
    teapot_route,
    trail_route,
    upper_route,
    user_route,
)

ALLOWED = "https://app.example"
REFUSED = "https://evil.example"


def _server(queues: tuple[Any, Any], *, with_router: bool = False) -> Server:
    routes = (
        loopback_builder("cors")
        .routes.with_route("/hello", hello_route)
        .with_route("/upper", upper_route, methods=["POST"])
        .with_route("/trail", trail_route)
        .with_route("/teapot/{item}", teapot_route)
        .with_route("/users/{user_id}", user_route, response_model=PublicUser)
        .with_cors([ALLOWED, "http://localhost:3000"], allow_credentials=True, allow_methods=["GET", "POST"])
        .with_middleware(TagMiddleware, tag="a")
        .with_middleware(OtherTagMiddleware, tag="b")
        .with_exception_handler(TeapotError, teapot_handler)
        .with_exception_handler(404, not_found_handler)
    )
    if with_router:
        routes.with_router(router, prefix="/v1", tags=["v1"])
    return routes.done().subprocess.with_ipc(*queues).done().build()


def _preflight(url: str, origin: str, method: str = "POST", headers: str = "x-token") -> httpx.Response:
    return httpx.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
        timeout=10,
    )


def test_cors_middleware_preflight_from_allowed_origin_is_allowed(queues: tuple[Any, Any]) -> None:
    """Steps: start the child; send preflights for POST /upper from an allowed origin, a refused
    origin, and for a method outside the policy. Expect the allowed one to get 200 with the allow
    headers echoing origin and requested header; the others 400 without Allow-Origin."""
    with running(_server(queues)) as url:
        allowed = _preflight(f"{url}/upper", ALLOWED)
        refused = _preflight(f"{url}/upper", REFUSED)
        wrong_method = _preflight(f"{url}/upper", ALLOWED, method="DELETE")

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert allowed.headers["access-control-allow-methods"] == "GET, POST"
    assert allowed.headers["access-control-allow-headers"] == "x-token"
    assert "Origin" in allowed.headers["vary"]

    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert refused.text == "Disallowed CORS origin"

    assert wrong_method.status_code == 400
    assert wrong_method.text == "Disallowed CORS method"


def test_cors_middleware_simple_request_carries_allow_origin(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: start the child; GET /hello from an allowed origin, a refused one and none; POST
    /upper (answered by the main process, once with an error status) from the allowed origin.
    Expect Allow-Origin and Allow-Credentials only for the allowed origin, on errors too."""
    with running(_server(queues)) as url:
        allowed = httpx.get(f"{url}/hello", headers={"Origin": ALLOWED}, timeout=10)
        refused = httpx.get(f"{url}/hello", headers={"Origin": REFUSED}, timeout=10)
        no_origin = httpx.get(f"{url}/hello", timeout=10)
        from_main = httpx.post(f"{url}/upper", json={"text": "hi"}, headers={"Origin": ALLOWED}, timeout=10)
        main_error = httpx.post(
            f"{url}/upper", json={"text": "hi", "fail_status": 409}, headers={"Origin": ALLOWED}, timeout=10
        )

    assert allowed.status_code == 200 and allowed.json() == {"hello": "world"}
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in allowed.headers["vary"]
    # The server still answers a refused origin; the browser is what withholds it from the page.
    assert refused.status_code == 200
    assert "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-origin" not in no_origin.headers
    assert from_main.status_code == 200 and from_main.json()["text"] == "HI"
    assert from_main.headers["access-control-allow-origin"] == ALLOWED
    assert main_error.status_code == 409
    assert main_error.headers["access-control-allow-origin"] == ALLOWED


def test_cors_middleware_any_origin_without_credentials(queues: tuple[Any, Any]) -> None:
    """Steps: start the child with ``with_cors(["*"])``; GET /hello and a PUT preflight from any
    origin. Expect ``Allow-Origin: *`` without Allow-Credentials, and the preflight allowed."""
    server = loopback_builder("cors").routes.with_route("/hello", hello_route).with_cors(["*"]).done()
    with running(server.subprocess.with_ipc(*queues).done().build()) as url:
        response = httpx.get(f"{url}/hello", headers={"Origin": REFUSED}, timeout=10)
        preflight = _preflight(f"{url}/hello", REFUSED, method="PUT")
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "PUT" in preflight.headers["access-control-allow-methods"]


def test_cors_middleware_first_added_middleware_is_outermost(queues: tuple[Any, Any]) -> None:
    """Steps: start the child with TagMiddleware(tag="a") added before OtherTagMiddleware(tag="b");
    each adds an x-trail header to the request going in and to the response going out. GET /trail,
    then send a CORS preflight. Expect the request trail a, b (a saw it first) and the response
    trail b, a (a saw it last): a is outermost. The preflight carries no trail: CORS is outside
    the user's middleware and answers it before them."""
    with running(_server(queues)) as url:
        response = httpx.get(f"{url}/trail", timeout=10)
        preflight = _preflight(f"{url}/trail", ALLOWED, method="GET")

    assert response.status_code == 200
    assert response.json() == {"trail": ["a", "b"]}
    assert response.headers.get_list(TRAIL_HEADER) == ["b", "a"]
    assert preflight.status_code == 200
    assert preflight.headers.get_list(TRAIL_HEADER) == []


def test_cors_middleware_exception_handlers_choose_the_response(queues: tuple[Any, Any]) -> None:
    """Steps: start the child; GET a route raising TeapotError (handler keyed by class), and an
    unknown path (handler keyed by 404). Expect 418 and 404 with the handlers' bodies, CORS
    headers included."""
    with running(_server(queues)) as url:
        teapot = httpx.get(f"{url}/teapot/kettle", headers={"Origin": ALLOWED}, timeout=10)
        unknown = httpx.get(f"{url}/nothing/here", timeout=10)

    assert teapot.status_code == 418
    assert teapot.json() == {"error": "teapot", "item": "kettle"}
    assert teapot.headers["access-control-allow-origin"] == ALLOWED
    assert unknown.status_code == 404
    assert unknown.json() == {"missing": "/nothing/here"}


def test_cors_middleware_response_model_filters_fields(queues: tuple[Any, Any]) -> None:
    """Steps: start the child; GET a route returning more than its response model declares. Expect
    only the model's fields, and the model in /openapi.json."""
    with running(_server(queues)) as url:
        response = httpx.get(f"{url}/users/7", timeout=10)
        schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert response.status_code == 200
    assert response.json() == {"id": 7, "name": "ada"}
    ok = schema["paths"]["/users/{user_id}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/PublicUser"}


def test_cors_middleware_router_is_served_under_its_prefix(queues: tuple[Any, Any]) -> None:
    """Steps: build with with_router(router, prefix="/v1", tags=["v1"]) and start the child. Expect
    /v1/items/3 served, /items/3 not, HTTPException(404) answered by the 404 handler, and the
    route tagged v1 (then the router's own tag) in /openapi.json."""
    with running(_server(queues, with_router=True)) as url:
        item = httpx.get(f"{url}/v1/items/3", timeout=10)
        unprefixed = httpx.get(f"{url}/items/3", timeout=10)
        missing = httpx.get(f"{url}/v1/items/0", timeout=10)
        schema = httpx.get(f"{url}/openapi.json", timeout=10).json()

    assert item.status_code == 200 and item.json() == {"item_id": 3}
    assert unprefixed.status_code == 404
    assert missing.status_code == 404 and missing.json() == {"missing": "/v1/items/0"}
    assert schema["paths"]["/v1/items/{item_id}"]["get"]["tags"] == ["v1", "items"]


# -- settings with_cors refuses, checked without a child -------------------------------------------


def test_cors_middleware_credentials_with_any_origin_is_refused() -> None:
    """Browsers refuse ``*`` with credentials: the builder refuses it first."""
    with pytest.raises(ConfigError, match="allow_credentials"):
        loopback_builder("cors").routes.with_cors(["*"], allow_credentials=True)


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("https://app.example/", "no path or slash"),
        ("https://app.example/api", "no path or slash"),
        ("https://app.example?x=1", "no path or slash"),
        ("app.example", "no path or slash"),
        ("ftp://app.example", "no path or slash"),
        ("", "no path or slash"),
        ("https://App.Example", "lower case; use 'https://app.example'"),
        ("https://app.example:443", "default port; use 'https://app.example'"),
        ("http://app.example:80", "default port; use 'http://app.example'"),
        ("https://app.example:70000", "invalid port"),
        ("https://*.app.example", "wildcards"),
    ],
)
def test_cors_middleware_origin_a_browser_never_sends_is_refused(origin: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        loopback_builder("cors").routes.with_cors([origin])
    assert repr(origin) in str(raised.value)
