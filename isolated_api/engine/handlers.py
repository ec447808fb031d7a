"""Handler registration: one handler per request type (looked up along the request's MRO, so
``object`` is a catch-all), each classified once by how it must be run."""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from isolated_api.engine.group import Group


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


def takes_context(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` has a second positional parameter without a default (or ``*args``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


class HandlerTable:
    """Request type -> handler (or the batcher / stepper serving it); a lookup walks the request's
    MRO and caches the answer."""

    def __init__(self) -> None:
        self._by_type: dict[type, Handler | Group] = {}
        self._cache: dict[type, Handler | Group | None] = {}

    def register(self, request_type: type, fn: Callable[..., Any]) -> None:
        check_request_type(request_type, "handle()")
        if not callable(fn):
            raise TypeError(f"handler for {request_type.__name__} must be callable, got {fn!r}")
        self._refuse_replacing_a_group(request_type)
        self._by_type[request_type] = Handler(fn, _kind(fn), takes_context(fn))
        self._cache.clear()

    def register_group(self, request_type: type, group: Group) -> None:
        self._refuse_replacing_a_group(request_type)
        self._by_type[request_type] = group
        self._cache.clear()

    def _refuse_replacing_a_group(self, request_type: type) -> None:
        # A batcher or stepper owns a runner task and queued members: replaced, they would be
        # stranded. A plain handler may be replaced, as before.
        entry = self._by_type.get(request_type)
        if entry is not None and not isinstance(entry, Handler):
            raise ValueError(f"{request_type.__name__} is already served by engine.batch() or engine.steps()")

    def groups(self) -> list[Group]:
        return [entry for entry in self._by_type.values() if not isinstance(entry, Handler)]

    def lookup(self, request_type: type) -> Handler | Group | None:
        try:
            return self._cache[request_type]
        except KeyError:
            pass
        found = next((self._by_type[t] for t in request_type.__mro__ if t in self._by_type), None)
        self._cache[request_type] = found
        return found


def check_request_type(request_type: object, where: str) -> None:
    if not isinstance(request_type, type):
        raise TypeError(f"{where} needs a request class (object for a catch-all), got {request_type!r}")
