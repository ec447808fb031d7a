"""Turns a recipe into the FastAPI app, in whichever process serves HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from isolated_api.shared.cors import apply_cors
from isolated_api.shared.recipe import AppRecipe, resolve
from isolated_api.worker.body_limits import BodyLimitMiddleware
from isolated_api.worker.channel import IPCChannel
from isolated_api.worker.dependencies import direct_channel
from isolated_api.worker.disconnect import DisconnectCancelMiddleware
from isolated_api.worker.drain import DrainMiddleware, DrainState
from isolated_api.worker.health_routes import Probe, install_health_routes
from isolated_api.worker.http_errors import install_error_handlers
from isolated_api.worker.metrics_middleware import MetricsMiddleware
from isolated_api.worker.metrics_routes import MetricsHooks, install_metrics_route


def build_app(
    recipe: AppRecipe,
    *,
    channel: IPCChannel | None,
    drain: DrainState,
    probe: Probe | None = None,
    metrics: MetricsHooks | None = None,
) -> FastAPI:
    user_lifespan = recipe.lifespan

    # One lifespan composes ours and the user's (FastAPI ignores on_event once a lifespan is set).
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        if channel is not None:
            await channel.start_polling()
        try:
            if user_lifespan is None:
                yield None
            else:
                async with user_lifespan(app) as state:
                    yield state
        finally:
            if metrics is not None and metrics.flush is not None:
                metrics.flush()  # the last counts leave before the link closes
            if channel is not None:
                await channel.stop_polling()

    app = FastAPI(title=recipe.title, description=recipe.description, version=recipe.version, lifespan=lifespan)
    app.state.ipc_channel = channel
    app.state.drain = drain
    install_error_handlers(app)
    if recipe.health is not None:
        install_health_routes(app, recipe.health, channel=channel, probe=probe)
    if recipe.metrics_path is not None and metrics is not None:
        install_metrics_route(app, recipe.metrics_path, metrics)
    for route in recipe.routes:
        app.add_api_route(
            route.path,
            # `channel: IPC` without FastAPI's per-request dependency solving (see direct_channel).
            direct_channel(route.handler),
            methods=list(route.methods),
            response_model=route.response_model,
            tags=list(route.tags) or None,
            **route.kwargs,
        )
    for router in recipe.routers:
        app.include_router(resolve(router.router), prefix=router.prefix, tags=list(router.tags) or None)
    for handler in recipe.exception_handlers:
        app.add_exception_handler(handler.key, handler.handler)  # type: ignore[arg-type]
    # Starlette puts each added middleware outside the previous one. Added in reverse, the
    # user's first middleware is the outermost of theirs; drain wraps them all and CORS wraps
    # drain, so even a 503 during shutdown carries CORS headers a browser can read.
    for middleware in reversed(recipe.middleware):
        app.add_middleware(middleware.cls, **middleware.options)  # type: ignore[arg-type]
    if recipe.cancel_on_disconnect:
        app.add_middleware(DisconnectCancelMiddleware)
    # Drain also notes each request's method and path, which travel with what it sends to the main
    # process (logged there if this worker dies with it in flight; request_origin.py).
    app.add_middleware(DrainMiddleware, state=drain)
    # Outside drain and the user's middleware, so an oversized body is refused before anything
    # reads it; inside CORS and metrics, so a browser can read the 413 and it is counted.
    app.add_middleware(BodyLimitMiddleware, limits=recipe.limits)
    if recipe.cors is not None:
        apply_cors(app, recipe.cors)
    if recipe.metrics_path is not None and metrics is not None:
        # Outermost, so it counts the statuses clients really got (drain 503s included).
        app.add_middleware(MetricsMiddleware, record=metrics.record)
    return app
