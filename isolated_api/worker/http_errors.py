"""Honest error responses (DESIGN.md invariant 5).

The channel's errors carry the status the client should see; they become JSON
``{"detail": ...}`` like FastAPI's own errors, without a traceback in the logs: these are
conditions of the system, not bugs in the handler.

Invalid request bodies must be 422. FastAPI's own 422 echoes the input back in strict JSON, and
for a body such as ``{"n": 1e400}`` (infinity), ``NaN`` or a lone surrogate that rendering fails
and the client gets a 500; ours writes the same detail safely. It also echoes every error's
``input`` whole: a 50 MB body came back as a 52 MB 422. Ours keeps FastAPI's shape (a list of
``{type, loc, msg, input, ctx}``) but clips each ``input`` to about ``MAX_ECHOED_INPUT`` characters
and lists at most ``MAX_ERRORS`` errors, the last entry saying how many more there were. A user's
handler for ``RequestValidationError`` still overrides it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.responses import Response

from isolated_api.shared.errors import IPCError


async def ipc_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IPCError)
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=exc.headers or None)


# Enough to show a client what was wrong with a field, never its whole upload: the 422 stays
# under ~10 KB however large or broken the body (20 errors of ~250 characters, plus locations).
MAX_ECHOED_INPUT = 200
MAX_ERRORS = 20


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value


class _Clip:
    """Copies a value up to a budget of characters, walking no further than it copies: strings
    cut short, containers' remaining items replaced by one ``"..."`` marker saying how many."""

    def __init__(self, budget: int) -> None:
        self.left = budget

    def __call__(self, value: Any) -> Any:
        if isinstance(value, bytes | bytearray):
            size, kept = len(value), max(self.left, 0)
            text = bytes(value[:kept]).decode("utf-8", "replace")
            self.left -= size
            return text if size <= kept else f"{text}...({size - kept} more bytes)"
        if isinstance(value, str):
            if len(value) <= self.left:
                self.left -= len(value)
                return value
            kept, self.left = max(self.left, 0), 0
            return f"{value[:kept]}...({len(value) - kept} more characters)"
        if isinstance(value, dict):
            clipped: dict[Any, Any] = {}
            for key, item in value.items():
                if self.left <= 0:
                    clipped["..."] = f"{len(value) - len(clipped)} more keys"
                    break
                self.left -= len(str(key)) + 2
                clipped[key] = self(item)
            return clipped
        if isinstance(value, list | tuple):
            items: list[Any] = []
            for item in value:
                if self.left <= 0:
                    items.append(f"...({len(value) - len(items)} more items)")
                    break
                self.left -= 2
                items.append(self(item))
            return items
        self.left -= 8
        return value


def bounded_errors(errors: Sequence[Any]) -> list[Any]:
    """FastAPI's validation errors with each ``input`` clipped and at most ``MAX_ERRORS`` kept."""
    kept = []
    for error in errors[:MAX_ERRORS]:
        if isinstance(error, dict) and "input" in error:
            error = {**error, "input": _Clip(MAX_ECHOED_INPUT)(error["input"])}
        kept.append(error)
    if len(errors) > MAX_ERRORS:
        more = len(errors) - MAX_ERRORS
        kept.append({"type": "too_many_errors", "loc": [], "msg": f"{more} more errors not shown", "input": None})
    return kept


async def validation_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = _finite(jsonable_encoder(bounded_errors(exc.errors())))
    body = json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False)
    return Response(body, status_code=422, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(IPCError, ipc_error_response)
    app.add_exception_handler(RequestValidationError, validation_error_response)
