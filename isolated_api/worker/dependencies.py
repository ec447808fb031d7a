"""How a route reaches the channel: ``channel: IPC`` in its signature, or
``request.app.state.ipc_channel``.

``IPC`` is a FastAPI dependency, and FastAPI solves each dependency per request with a recursive
``solve_dependencies`` call, a sizeable share of a small JSON route (docs/performance.md, "The IPC
dependency"), where ``app.state`` costs nothing. ``direct_channel`` gives routes registered
through the builder the cheap path without changing how they are written: an ``async def``
handler that takes ``IPC`` parameters is registered as a wrapper that takes the ``Request``
instead (FastAPI hands that over without its dependency machinery) and passes the channel in.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi import params as fastapi_params

from isolated_api.shared.errors import ChannelClosedError
from isolated_api.worker.channel import IPCChannel


# async on purpose: FastAPI runs a plain `def` dependency in a thread pool, a thread hop per request.
async def get_ipc_channel(request: Request) -> IPCChannel:
    channel = getattr(request.app.state, "ipc_channel", None)
    if channel is None:
        # Direct mode has no main-process link: say so instead of an AttributeError.
        raise ChannelClosedError("this server has no IPC channel (configure .subprocess.with_ipc(...))")
    assert isinstance(channel, IPCChannel)
    return channel


IPC = Annotated[IPCChannel, Depends(get_ipc_channel)]

_REQUEST_PARAM = "isolated_api_request"
_PLAIN = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _asks_for_channel(annotation: Any, default: Any) -> bool:
    """``IPC``, ``Annotated[..., Depends(get_ipc_channel)]`` or ``= Depends(get_ipc_channel)``."""
    marks: list[Any] = [default]
    if typing.get_origin(annotation) is Annotated:
        marks += list(annotation.__metadata__)
    return any(isinstance(mark, fastapi_params.Depends) and mark.dependency is get_ipc_channel for mark in marks)


def _mark_coroutine_function(function: Callable[..., Any]) -> None:
    """Makes ``inspect.iscoroutinefunction`` (3.12+) and ``asyncio.iscoroutinefunction`` (which
    FastAPI reads on 3.11 and 3.12) report a function that returns a coroutine as one."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        mark(function)
    # asyncio's legacy marker, all it recognises on 3.11.
    function._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=64)
def _takes_request(override: Callable[..., Any]) -> bool:
    # Read once per override, not per request.
    return any(p.default is inspect.Parameter.empty for p in inspect.signature(override).parameters.values())


async def _channel_for(request: Request) -> Any:
    # An override of get_ipc_channel (tests do this) is honoured as FastAPI would for the usual
    # shapes: called with no argument, or with the request.
    override = request.app.dependency_overrides.get(get_ipc_channel)
    if override is None:
        return await get_ipc_channel(request)
    result = override(request) if _takes_request(override) else override()
    return await result if inspect.isawaitable(result) else result


def direct_channel(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """``endpoint`` itself, or (an ``async def`` taking ``IPC`` parameters) a wrapper FastAPI sees
    with a ``Request`` in their place. Anything else (sync handlers, ``*args``, annotations that
    don't resolve) is left to FastAPI as written."""
    if not inspect.iscoroutinefunction(endpoint):
        return endpoint
    try:
        hints = typing.get_type_hints(endpoint, include_extras=True)
        signature = inspect.signature(endpoint)
    except Exception:  # unresolvable annotations: FastAPI will say what is wrong
        return endpoint
    params = list(signature.parameters.values())
    channel_names = [p.name for p in params if _asks_for_channel(hints.get(p.name, p.annotation), p.default)]
    if not channel_names or any(p.kind not in _PLAIN for p in params):
        return endpoint
    kept = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in params if p.name not in channel_names]
    theirs = next((p.name for p in kept if p.annotation is Request), None)
    own_request = theirs is None
    if own_request and any(p.name == _REQUEST_PARAM for p in params):
        return endpoint
    request_name = _REQUEST_PARAM if theirs is None else theirs
    if own_request:
        kept.append(inspect.Parameter(_REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Request))
    call: Callable[..., Awaitable[Any]] = endpoint

    def call_with(channel: Any, values: dict[str, Any]) -> Awaitable[Any]:
        for name in channel_names:
            values[name] = channel
        return call(**values)

    async def with_override(request: Request, values: dict[str, Any]) -> Any:
        return await call_with(await _channel_for(request), values)

    # A plain function that returns the endpoint's coroutine for FastAPI to await (marked as a
    # coroutine function below, so FastAPI awaits it rather than running it in a thread): the
    # handler's awaits then suspend one frame fewer than through an ``async def`` wrapper, whose
    # frame showed in py-spy's profile (docs/performance.md, "Figures behind the code").
    def with_channel(**values: Any) -> Awaitable[Any]:
        request = values.pop(request_name) if own_request else values[request_name]
        app = request.scope["app"]
        channel = None
        if not app.dependency_overrides:  # the usual case, inline
            try:
                # Starlette's ``State`` keeps its attributes in ``_state``; its ``__getattr__``
                # would be a Python call per request.
                channel = app.state._state.get("ipc_channel")
            except AttributeError:  # a ``State`` of another make
                channel = getattr(app.state, "ipc_channel", None)
        if channel is None:
            return with_override(request, values)
        return call_with(channel, values)

    _mark_coroutine_function(with_channel)
    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(with_channel, attribute, getattr(endpoint, attribute, None))
    # No __wrapped__: FastAPI would follow it back to the IPC parameters.
    with_channel.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=kept, return_annotation=hints.get("return", signature.return_annotation)
    )
    return with_channel
