"""``GET /metrics``: Prometheus text for the whole server, and the middleware that counts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from isolated_api.worker.metrics_middleware import Record


@dataclass(frozen=True)
class MetricsHooks:
    """``record(method, route, status)`` per answered request; ``render()`` the exposition text
    (None if the main process did not answer in time); ``flush()``, if counts wait to be sent,
    sends them (called at shutdown)."""

    record: Record
    render: Callable[[], Awaitable[bytes | None]]
    flush: Callable[[], None] | None = None


def install_metrics_route(app: FastAPI, path: str, hooks: MetricsHooks) -> None:
    async def metrics() -> Response:
        text = await hooks.render()
        if text is None:
            return JSONResponse({"detail": "the main process did not answer the metrics scrape"}, status_code=503)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(path, metrics, methods=["GET"], tags=["metrics"], include_in_schema=False)
