"""UvicornConfig -> uvicorn.Config, the same for direct mode and the child."""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from isolated_api.shared.config import ApiConfig
from isolated_api.worker.head_limits import head_limited_protocol


def uvicorn_config(app: FastAPI, api: ApiConfig, log_config: dict[str, Any] | None) -> uvicorn.Config:
    settings = api.uvicorn
    return uvicorn.Config(
        app,
        host=api.host,
        port=api.port,
        lifespan="on",
        # httptools (uvicorn's choice when installed, and ours to depend on) with limits on the
        # request head and a head timeout; the body's limits are the app's (BodyLimitMiddleware).
        http=head_limited_protocol(settings.limits),
        log_config=log_config,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_keep_alive=settings.timeout_keep_alive,
        limit_concurrency=settings.limit_concurrency,
        limit_max_requests=settings.limit_max_requests,
        backlog=settings.backlog,
        ssl_keyfile=settings.ssl_keyfile,
        ssl_certfile=settings.ssl_certfile,
    )
