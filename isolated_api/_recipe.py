"""The recipe of the FastAPI app: plain data the builder collects and the serving process turns
into an app. It is pickled to the child under ``spawn``, so ``check_picklable`` names what isn't."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from features.cors_middleware.cors import CorsPolicy


class BuildError(ValueError):
    """The server cannot be built as configured."""


@dataclass(frozen=True)
class RouteSpec:
    path: str
    handler: Callable[..., Any]
    methods: tuple[str, ...]
    response_model: Any = None
    tags: tuple[str, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RouterSpec:
    router: Any
    prefix: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class MiddlewareSpec:
    cls: type
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExceptionHandlerSpec:
    key: int | type[BaseException]
    handler: Callable[..., Any]


@dataclass
class AppRecipe:
    title: str = "API Server"
    description: str = ""
    version: str = "0.1.0"
    routes: list[RouteSpec] = field(default_factory=list)
    routers: list[RouterSpec] = field(default_factory=list)
    middleware: list[MiddlewareSpec] = field(default_factory=list)
    exception_handlers: list[ExceptionHandlerSpec] = field(default_factory=list)
    cors: CorsPolicy | None = None
    lifespan: Callable[..., Any] | None = None

    def parts(self) -> Sequence[tuple[str, object]]:
        named: list[tuple[str, object]] = []
        named += [(f"route handler {_name(r.handler)!r} for {r.path}", r.handler) for r in self.routes]
        named += [(f"response_model of {r.path}", r.response_model) for r in self.routes if r.response_model]
        named += [(f"route options of {r.path}", r.kwargs) for r in self.routes if r.kwargs]
        named += [(f"router {r.router!r} (prefix {r.prefix!r})", r.router) for r in self.routers]
        named += [(f"middleware {_name(m.cls)!r}", m) for m in self.middleware]
        named += [(f"exception handler {_name(e.handler)!r}", e) for e in self.exception_handlers]
        if self.lifespan is not None:
            named.append((f"lifespan {_name(self.lifespan)!r}", self.lifespan))
        return named

    def check_picklable(self) -> None:
        """Under ``spawn`` the recipe crosses to the child by pickle: fail now, naming the part."""
        for what, part in self.parts():
            try:
                pickle.dumps(part)
            except Exception as exc:
                raise BuildError(
                    f"{what} cannot be sent to the HTTP child process ({exc}). Define it at module level "
                    "(not a lambda, closure or nested function) so the child can import it."
                ) from exc


def _name(obj: object) -> str:
    return str(getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj))
