"""``GET /health/live`` (this HTTP process is up) and ``GET /health/ready`` (it can serve: the
main process answers the probe and reads its requests, by the rules of ``shared/readiness.py``).
Both answer from the HTTP process itself; the readiness probe travels on the worker's private pipe
to the relay, so it never waits behind user requests and never counts against ``max_pending``."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from isolated_api.shared.readiness import HealthSettings, readiness_problem
from isolated_api.worker.channel import IPCChannel

Probe = Callable[[float], Awaitable[dict[str, Any] | None]]


def install_health_routes(
    app: FastAPI, settings: HealthSettings, *, channel: IPCChannel | None, probe: Probe | None
) -> None:
    started = time.monotonic()

    def base_facts() -> dict[str, Any]:
        facts: dict[str, Any] = {"pid": os.getpid(), "uptime": round(time.monotonic() - started, 3)}
        if channel is not None:
            facts.update(
                pending=channel.pending_count,
                max_pending=channel.max_pending,
                rejected=channel.rejected_count,
                dropped=channel.dropped_count,
            )
        return facts

    async def live() -> dict[str, Any]:
        return {"status": "alive", **base_facts()}

    async def ready() -> JSONResponse:
        facts = base_facts()
        if channel is None or probe is None:
            # Direct mode: no main-process link to check.
            return JSONResponse({"status": "ready", **facts})
        main = await probe(settings.deadline)
        problem = readiness_problem(
            main, channel_open=channel.is_open, deadline=settings.deadline, beat_timeout=settings.beat_timeout
        )
        if main is not None and "engines" in main:
            # Remote engines: this worker's view of each (state, load, what it served).
            facts.update(engines=main["engines"], late_replies=main["late_replies"], retried=main["retried"])
        elif main is not None:
            # Server-wide figures from the main process (all workers together).
            facts.update(
                pending=main["pending"],
                rejected=main["rejected"] + facts.get("rejected", 0),
                dropped=main["dropped"] + facts.get("dropped", 0),
                restarts=main.get("restarts", 0),
                last_error=main.get("last_error"),
            )
        body = {"status": "ready" if problem is None else "unavailable", "problem": problem, **facts}
        return JSONResponse(body, status_code=200 if problem is None else 503)

    app.add_api_route(settings.live_path, live, methods=["GET"], tags=["health"], include_in_schema=True)
    app.add_api_route(settings.ready_path, ready, methods=["GET"], tags=["health"], include_in_schema=True)
