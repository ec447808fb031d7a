"""Honest error responses (DESIGN.md invariant 5).

The channel's errors carry the status the client should see; they become JSON
``{"detail": ...}`` like FastAPI's own errors, without a traceback in the logs: these are
conditions of the system, not bugs in the handler.

Invalid request bodies must be 422. FastAPI's own 422 echoes the input back in strict JSON, and
for a body such as ``{"n": 1e400}`` (infinity), ``NaN`` or a lone surrogate that rendering fails
and the client gets a 500; ours writes the same detail safely. A user's handler for
``RequestValidationError`` still overrides it.
"""

from __future__ import annotations

import json
import math
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


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value


async def validation_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = _finite(jsonable_encoder(exc.errors()))
    body = json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False)
    return Response(body, status_code=422, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(IPCError, ipc_error_response)
    app.add_exception_handler(RequestValidationError, validation_error_response)
