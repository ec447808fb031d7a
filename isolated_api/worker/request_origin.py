"""Which HTTP request a message to the main process came from: its method and path travel with it
in the request frame, so that when a worker dies the main process can log what was in flight.

The drain middleware, which every request of a worker passes, keeps the request's ASGI scope in
a context variable (``remember``); the request's handler, and any task it starts, inherits the
context, and the link reads the method and path from it when it sends (``current_origin``). Not
a middleware of its own: a layer costs every request a coroutine frame, and every suspension of
the handler a pass through it, far more than setting a context variable costs
(docs/performance.md, "Figures behind the code"); and the text is built only for requests that
reach the main process, not for every request."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from isolated_api.shared.framing import origin_text

_scope: ContextVar[Any] = ContextVar("isolated_api_request_scope", default=None)


def remember(scope: Any) -> None:
    """Called for each HTTP request in its own task's context: nothing to reset afterwards."""
    _scope.set(scope)


def current_origin() -> bytes:
    """``b"POST /upper"`` inside a request's handler; ``b""`` elsewhere."""
    scope = _scope.get()
    if scope is None:
        return b""
    return origin_text(scope["method"], scope["path"])
