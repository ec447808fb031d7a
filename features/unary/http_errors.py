"""Maps the channel's errors to the statuses of DESIGN.md invariant 5, as JSON
``{"detail": ...}`` like FastAPI's own errors, without a traceback in the logs: these are
conditions of the system, not bugs in the handler."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from features.ipc.errors import IPCError


async def ipc_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IPCError)
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=exc.headers or None)


def install_ipc_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(IPCError, ipc_error_response)
