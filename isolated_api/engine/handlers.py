"""Handler registration: one handler per request type (looked up along the request's MRO, so
``object`` is a catch-all), each classified once by how it must be run."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Kind(enum.Enum):
    SYNC = "sync"  # a plain function or a generator function: runs in a worker thread
    ASYNC = "async"  # ``async def``: awaited on the engine's loop
    ASYNC_GEN = "async_gen"  # ``async def`` with ``yield``: iterated on the engine's loop


@dataclass(frozen=True, slots=True)
class Handler:
    fn: Callable[..., Any]
    kind: Kind
    takes_context: bool

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


def _kind(fn: Callable[..., Any]) -> Kind:
    if inspect.isasyncgenfunction(fn):
        return Kind.ASYNC_GEN
    if inspect.iscoroutinefunction(fn):
        return Kind.ASYNC
    return Kind.SYNC


def _takes_context(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` has a second positional parameter without a default (or ``*args``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


class HandlerTable:
    """Request type -> handler; a lookup walks the request's MRO and caches the answer."""

    def __init__(self) -> None:
        self._by_type: dict[type, Handler] = {}
        self._cache: dict[type, Handler | None] = {}

    def register(self, request_type: type, fn: Callable[..., Any]) -> None:
        if not isinstance(request_type, type):
            raise TypeError(f"handle() needs a request class (object for a catch-all), got {request_type!r}")
        if not callable(fn):
            raise TypeError(f"handler for {request_type.__name__} must be callable, got {fn!r}")
        self._by_type[request_type] = Handler(fn, _kind(fn), _takes_context(fn))
        self._cache.clear()

    def lookup(self, request_type: type) -> Handler | None:
        try:
            return self._cache[request_type]
        except KeyError:
            pass
        found = next((self._by_type[t] for t in request_type.__mro__ if t in self._by_type), None)
        self._cache[request_type] = found
        return found
