"""The recipe of the FastAPI app: plain data the builder collects and the serving process turns
into an app. It is pickled to the child under ``spawn``, so ``check_picklable`` names what isn't."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from isolated_api.shared.config import RequestLimits
from isolated_api.shared.context_objects import factory_name, find_wrong_context
from isolated_api.shared.cors import CorsPolicy
from isolated_api.shared.readiness import HealthSettings
from isolated_api.shared.spawn_payload import check_sendable


class BuildError(ValueError):
    """The server cannot be built as configured."""


@dataclass(frozen=True)
class ModuleAttribute:
    """An object sent by name: the child imports ``module`` and takes ``name`` from it. Used for
    objects that pickle can't carry by value (an ``APIRouter`` holds closures)."""

    module: str
    name: str

    def resolve(self) -> Any:
        return getattr(importlib.import_module(self.module), self.name)

    @classmethod
    def locate(cls, obj: object) -> ModuleAttribute | None:
        """Finds a module-level name bound to ``obj``, looking first where its routes' endpoints
        were defined."""
        hints = [getattr(getattr(r, "endpoint", None), "__module__", None) for r in getattr(obj, "routes", [])]
        names = [h for h in hints if isinstance(h, str)] + list(sys.modules)
        for module_name in dict.fromkeys(names):
            module = sys.modules.get(module_name)
            for attr, value in list(getattr(module, "__dict__", {}).items()):
                if value is obj and not attr.startswith("__"):
                    # The child knows the script as __main__ too (multiprocessing aliases it).
                    return cls("__main__" if module_name == "__mp_main__" else module_name, attr)
        return None


def resolve(obj: Any) -> Any:
    return obj.resolve() if isinstance(obj, ModuleAttribute) else obj


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
    health: HealthSettings | None = field(default_factory=HealthSettings)
    metrics_path: str | None = "/metrics"
    cancel_on_disconnect: bool = False
    # The app's share of UvicornConfig.limits (the body's size and time), copied by build().
    limits: RequestLimits = field(default_factory=RequestLimits)

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

    def prepare_for_spawn(self, start_method: str = "spawn") -> None:
        """Under ``spawn`` (or ``forkserver``, the ``start_method``) the recipe crosses to the child
        by pickle: routers go by name, and anything else that can't be pickled fails now, naming
        the part and what to do."""
        for index, spec in enumerate(self.routers):
            try:
                check_sendable(spec.router)
            except Exception:
                ref = ModuleAttribute.locate(spec.router)
                if ref is None:
                    raise BuildError(
                        f"router {spec.router!r} (prefix {spec.prefix!r}) cannot be sent to the HTTP child process: "
                        "define the APIRouter at module level so the child can import it"
                    ) from None
                self.routers[index] = RouterSpec(ref, spec.prefix, spec.tags)
        for what, part in self.parts():
            try:
                check_sendable(part)
            except Exception as exc:
                # multiprocessing's own messages end with a period; the fix follows as a new sentence.
                cause = str(exc).rstrip(".")
                fix = _fix_for(exc, part, start_method)
                raise BuildError(f"{what} cannot be sent to the HTTP child process: {cause}. {fix}") from exc


def _fix_for(exc: Exception, part: object, start_method: str) -> str:
    wrong = find_wrong_context(part)
    if wrong is not None:
        kind = factory_name(wrong)
        return (
            f"It holds a multiprocessing {kind} made by another start method's context (multiprocessing.{kind}() "
            f"uses the platform's default), and the workers start with {start_method!r}: create it with "
            f"multiprocessing.get_context({start_method!r}).{kind}(), or start workers with "
            ".subprocess.with_start_method('fork')."
        )
    # Functions pickle by name: only a lambda, closure or nested function is "local". Anything else
    # is an object the part holds that can't be pickled (a lock of threading, an open file, a client).
    if "local object" in str(exc) or "<lambda>" in str(exc):
        return "Define it at module level (not a lambda, closure or nested function) so the child can import it."
    return (
        "Everything it holds is pickled for each worker: create what can't be pickled (a thread lock, an open "
        "file or socket, a client) inside the worker, e.g. in the lifespan, or start workers with "
        ".subprocess.with_start_method('fork')."
    )


def _name(obj: object) -> str:
    return str(getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj))
