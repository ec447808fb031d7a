"""ServerBuilder: a fluent recipe for a Server. ``.routes``, ``.subprocess`` and ``.uvicorn`` are
focused configurers; each ``with_*`` returns the configurer and ``done()`` returns the builder."""

from __future__ import annotations

import dataclasses
import queue
from collections.abc import Callable, Sequence
from typing import Any

from isolated_api.main.subprocess_manager import START_METHODS
from isolated_api.server.server import Server
from isolated_api.shared.codecs import Codec, PickleCodec
from isolated_api.shared.config import (
    DEFAULT_CHILD_GC_THRESHOLD,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    ApiConfig,
    ConfigError,
    IPCConfig,
    OutboxLimits,
    UvicornConfig,
    check_drain_timeout,
    check_gc_threshold,
    check_max_message_size,
    check_reply_busy_wait,
)
from isolated_api.shared.cors import CorsPolicy
from isolated_api.shared.engines import EnginesConfig, Resolver
from isolated_api.shared.readiness import HealthSettings
from isolated_api.shared.recipe import (
    AppRecipe,
    BuildError,
    ExceptionHandlerSpec,
    MiddlewareSpec,
    RouterSpec,
    RouteSpec,
)
from isolated_api.shared.restart_policy import RestartPolicy
from isolated_api.shared.spawn_payload import check_sendable
from isolated_api.shared.spec import ServerSpec

_HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"}


class RouteConfigurer:
    """Routes, routers, exception handlers, middleware, CORS and lifespan of the app."""

    def __init__(self, builder: ServerBuilder) -> None:
        self._builder = builder
        self._recipe = builder._recipe

    def with_route(
        self,
        path: str,
        handler: Callable[..., Any],
        methods: Sequence[str] | None = None,
        response_model: Any = None,
        tags: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> RouteConfigurer:
        """Adds ``handler`` at ``path`` (``methods`` default to GET). ``kwargs`` go to FastAPI's
        ``add_api_route`` (``status_code``, ``summary``, ``dependencies``...)."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"route path must start with '/', got {path!r}")
        if not callable(handler):
            raise ConfigError(f"handler for {path} must be callable, got {handler!r}")
        chosen = tuple(m.upper() for m in (methods or ("GET",)))
        unknown = [m for m in chosen if m not in _HTTP_METHODS]
        if unknown:
            raise ConfigError(f"route {path}: unknown HTTP method(s) {unknown}")
        self._recipe.routes.append(RouteSpec(path, handler, chosen, response_model, tuple(tags or ()), dict(kwargs)))
        return self

    def with_router(self, router: Any, prefix: str = "", tags: Sequence[str] | None = None) -> RouteConfigurer:
        """Includes a FastAPI ``APIRouter`` under ``prefix``."""
        if not hasattr(router, "routes"):
            raise ConfigError(f"with_router needs a fastapi.APIRouter, got {type(router).__name__}")
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ConfigError(f"router prefix must start with '/' and not end with '/', got {prefix!r}")
        self._recipe.routers.append(RouterSpec(router, prefix, tuple(tags or ())))
        return self

    def with_exception_handler(
        self, exc_class_or_status: int | type[BaseException], handler: Callable[..., Any]
    ) -> RouteConfigurer:
        """``handler(request, exc)`` answers for an exception class or an HTTP status code."""
        is_class = isinstance(exc_class_or_status, type) and issubclass(exc_class_or_status, BaseException)
        if not is_class and not isinstance(exc_class_or_status, int):
            raise ConfigError(
                f"exception handler key must be an exception class or a status code, got {exc_class_or_status!r}"
            )
        if not callable(handler):
            raise ConfigError(f"exception handler must be callable, got {handler!r}")
        self._recipe.exception_handlers.append(ExceptionHandlerSpec(exc_class_or_status, handler))
        return self

    def with_middleware(self, cls: type, **options: Any) -> RouteConfigurer:
        """Adds an ASGI middleware class. The first added is the outermost (sees requests first)."""
        if not isinstance(cls, type):
            raise ConfigError(f"middleware must be a class taking the ASGI app first, got {cls!r}")
        self._recipe.middleware.append(MiddlewareSpec(cls, dict(options)))
        return self

    def with_cors(
        self,
        origins: Sequence[str],
        allow_credentials: bool = False,
        allow_methods: Sequence[str] = ("*",),
        allow_headers: Sequence[str] = ("*",),
    ) -> RouteConfigurer:
        """CORS for browser clients; checked now (credentials with ``"*"`` is refused)."""
        self._recipe.cors = CorsPolicy.of(origins, allow_credentials, allow_methods, allow_headers)
        return self

    def with_health(
        self, live_path: str = "/health/live", ready_path: str = "/health/ready", deadline: float = 1.0
    ) -> RouteConfigurer:
        """The built-in health routes (on by default): ``live_path`` answers 200 while the HTTP
        process is up; ``ready_path`` answers 200 only if the main process answers a probe within
        ``deadline`` seconds and is not sitting on requests, else 503. Both report this worker's pid,
        uptime, pending, max_pending, rejected and dropped counts; ``ready_path`` adds the
        server-wide counts from the main process, its restarts and last error."""
        self._recipe.health = HealthSettings(live_path, ready_path, deadline)
        return self

    def with_metrics(self, path: str = "/metrics") -> RouteConfigurer:
        """``GET path`` serves Prometheus metrics for the whole server (on by default at
        ``/metrics``): requests by route and status, pending, rejections by reason, dropped
        replies, IPC round-trip latency, stream chunks, cancel notices, worker restarts."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"metrics path must start with '/', got {path!r}")
        self._recipe.metrics_path = path
        return self

    def without_metrics(self) -> RouteConfigurer:
        """No ``/metrics`` route and no per-request counting."""
        self._recipe.metrics_path = None
        return self

    def without_health(self) -> RouteConfigurer:
        """No built-in health routes."""
        self._recipe.health = None
        return self

    def with_lifespan(self, lifespan: Callable[..., Any]) -> RouteConfigurer:
        """An ``@asynccontextmanager`` taking the app, run inside the serving process."""
        if not callable(lifespan):
            raise ConfigError(f"lifespan must be callable, got {lifespan!r}")
        self._recipe.lifespan = lifespan
        return self

    def done(self) -> ServerBuilder:
        return self._builder


class SubprocessConfigurer:
    """``with_ipc`` puts the HTTP API in a child process linked to this one by the two queues."""

    def __init__(self, builder: ServerBuilder) -> None:
        self._builder = builder

    def with_ipc(self, request_q: Any, response_q: Any) -> SubprocessConfigurer:
        """Enables subprocess mode. Requests arrive on ``request_q``; put replies (same ``.id``)
        on ``response_q``. Any object with ``put``/``get`` works (``multiprocessing.Queue``,
        ``queue.Queue``...). Only the server reads ``response_q``."""
        for name, q in (("request_q", request_q), ("response_q", response_q)):
            if not (callable(getattr(q, "put", None)) and callable(getattr(q, "get", None))):
                raise ConfigError(f"{name} must be a queue with put() and get(), got {type(q).__name__}")
        if request_q is response_q:
            raise ConfigError("request_q and response_q must be two different queues")
        self._builder._queues = (request_q, response_q)
        return self

    def with_engines(
        self,
        *addresses: str,
        ping_interval: float = 0.5,
        ping_timeout: float = 2.0,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        resolve_interval: float = 10.0,
        retry_lost: bool = False,
        allow_pickle: bool = False,
        curve_server_key: str | None = None,
        resolver: Resolver | None = None,
    ) -> SubprocessConfigurer:
        """Enables subprocess mode with the work on other machines: each HTTP worker sends
        requests over ZeroMQ to the ``EngineHost`` at each address (``"tcp://gpu-1:5700"``), the
        least-loaded ready one first, instead of to queues of this process. Handlers and the
        error table do not change. A DNS name that resolves to several addresses is that many
        engines, resolved again every ``resolve_interval`` seconds (a Kubernetes headless
        service); ``resolver(host, port) -> [ip, ...]`` replaces the system's resolver.

        An engine whose connection closes, or that leaves a ping unanswered for ``ping_timeout``
        seconds, is lost: the requests on it end at once (503, or ``event: error`` on a stream
        already answering); new requests go to the others. ``retry_lost=True`` sends a lost unary
        request once to another engine: only for idempotent work. Use a ``MsgspecCodec``
        (``with_codec``): ``build()`` refuses pickle over the network unless ``allow_pickle``.
        ``curve_server_key``: the engine hosts' CURVE public key, to encrypt and authenticate."""
        self._builder._engines = EnginesConfig(
            tuple(addresses),
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            resolve_interval=resolve_interval,
            retry_lost=retry_lost,
            allow_pickle=allow_pickle,
            curve_server_key=curve_server_key,
            resolver=resolver,
        )
        return self

    def with_log_file(self, path: str) -> SubprocessConfigurer:
        """Everything the child writes (logging, uvicorn, print, native fd 1/2) goes to ``path``."""
        self._builder._api = dataclasses.replace(self._builder._api, log_file=str(path))
        return self

    def with_poll_interval(self, seconds: float) -> SubprocessConfigurer:
        """Kept for compatibility; validated, but replies are read without polling."""
        self._builder._ipc = dataclasses.replace(self._builder._ipc, poll_interval=seconds)
        return self

    def with_queue_timeout(self, seconds: float) -> SubprocessConfigurer:
        """How long to wait for room in a bounded, full ``request_q`` before answering 503."""
        self._builder._ipc = dataclasses.replace(self._builder._ipc, queue_timeout=seconds)
        return self

    def with_max_pending(self, count: int) -> SubprocessConfigurer:
        """Requests awaiting replies at once; past it, 503 + Retry-After."""
        self._builder._ipc = dataclasses.replace(self._builder._ipc, max_pending=count)
        return self

    def with_overload_status(self, status: int, retry_after: int = 1) -> SubprocessConfigurer:
        """Answer past ``max_pending`` with 503 (default) or 429, and this ``Retry-After``."""
        self._builder._ipc = dataclasses.replace(self._builder._ipc, overload_status=status, retry_after=retry_after)
        return self

    def with_config(self, config: IPCConfig) -> SubprocessConfigurer:
        if not isinstance(config, IPCConfig):
            raise ConfigError(f"expected an IPCConfig, got {type(config).__name__}")
        self._builder._ipc = config
        return self

    def with_auto_restart(
        self, max_restarts: int = 5, backoff: float = 0.5, max_backoff: float = 10.0, window: float = 60.0
    ) -> SubprocessConfigurer:
        """Replace an HTTP worker that dies without ``stop()`` asking (crash, SIGKILL, OOM kill,
        ``limit_max_requests``), as Kubernetes would. A worker that served a request, or stayed
        ready ``window`` seconds, is replaced at once, however often. A crash loop (dying before
        it is ready, or sooner than ``window`` without serving) waits ``backoff`` seconds, doubling
        with each one in a row up to ``max_backoff``, and starts over after a healthy run. Only
        start-ups that fail ``max_restarts`` times in a row give the slot up: logged as an error
        with the cause, in ``server.health()["gave_up"]``, and ``server.is_running`` turns False
        when no slot is left. Off by default."""
        self._builder._restart_policy = RestartPolicy(max_restarts, backoff, max_backoff, window)
        return self

    def with_cancellation(self, enabled: bool = True) -> SubprocessConfigurer:
        """Tell the main process when nobody waits for a request any more: a client that
        disconnects cancels its handler, and a ``CancelRequest(id, reason)`` goes on ``request_q``
        for a request that timed out, was cancelled, or whose worker died. Off by default: a main
        loop must expect these messages (the ``Engine`` companion does)."""
        self._builder._recipe.cancel_on_disconnect = enabled
        self._builder._cancel_notices = enabled
        return self

    def with_codec(self, codec: Codec) -> SubprocessConfigurer:
        """How requests and replies cross between processes: ``PickleCodec()`` (default) or
        ``MsgspecCodec(*struct_types)``, with which the queues carry MessagePack bytes that the main
        process decodes with ``server.codec`` (the ``Engine`` companion does it itself)."""
        needed = ("encode", "decode", "encode_control", "encode_id", "decode_id")
        if not all(callable(getattr(codec, name, None)) for name in needed):
            raise ConfigError(f"expected a codec (PickleCodec, MsgspecCodec), got {codec!r}")
        self._builder._codec = codec
        return self

    def with_start_method(self, method: str) -> SubprocessConfigurer:
        """``"spawn"`` (default: safe with threads, CUDA, macOS), ``"forkserver"`` or ``"fork"``."""
        if method not in START_METHODS:
            raise ConfigError(f"start method must be one of {START_METHODS}, got {method!r}")
        self._builder._start_method = method
        return self

    def with_gc_threshold(self, first: int | None) -> SubprocessConfigurer:
        """The HTTP child's first garbage-collection threshold (``gc.set_threshold(first)``),
        100,000 by default; ``None`` keeps the interpreter's (700 in CPython 3.11).

        Requests awaiting the main process stay alive across young collections, and at 700 each
        collection walks all of them again: with 256 requests in flight that cost the child a
        fifth more work per request (measured with callgrind). A higher threshold lets unreachable
        cycles wait longer before they are freed; the main process is not touched."""
        check_gc_threshold(first)
        self._builder._gc_threshold = first
        return self

    def with_stalled_worker_limits(
        self,
        max_queued_bytes: int = OutboxLimits.max_queued_bytes,
        stall_timeout: float = OutboxLimits.stall_timeout,
    ) -> SubprocessConfigurer:
        """When an HTTP worker that stopped reading its replies (a blocked event loop, SIGSTOP)
        counts as dead: when a reply finds more than ``max_queued_bytes`` already queued for it in
        the main process behind the write in progress (one reply, whatever its size, is never a
        stall), or after ``stall_timeout`` seconds in which its pipe took nothing while replies
        waited. It is then
        logged once, killed, its requests end once, and (with auto-restart) it is replaced; the
        other workers never wait for it. Defaults: 64 MiB, 20 s. Lower them to free a stuck
        worker's slot sooner; raise ``stall_timeout`` if a route may block its loop for longer on
        purpose."""
        self._builder._outbox_limits = OutboxLimits(max_queued_bytes, stall_timeout)
        return self

    def with_max_message_size(self, size: int) -> SubprocessConfigurer:
        """The largest request or reply, in bytes once encoded, that crosses between an HTTP worker
        and the main process (64 MiB by default, at least 64 KiB). A request over it is answered
        413 before it is sent; a reply over it fails its request alone with 502; the worker and
        its other requests go on. ``.uvicorn.with_max_body_size`` may not be set above it
        (``build()`` says so): raise both for larger uploads."""
        check_max_message_size(size)
        self._builder._max_message_size = size
        return self

    def with_reply_busy_wait(self, seconds: float) -> SubprocessConfigurer:
        """Off by default. When an HTTP worker sends a request while no other request awaits the
        main process (one client at a time), it checks its pipe for the reply for up to
        ``seconds`` (at most 0.01) before its event loop goes to sleep. Use it when the main
        process answers within that time and the latency of a lone request matters: on a VM
        where waking an idle CPU is slow it shortens a lone request's round trip
        (docs/performance.md, "Busy wait", has the figures).
        The cost: that worker's event loop serves nothing else meanwhile, and a reply that
        takes longer burns the whole wait in CPU. Applies to the pipes of ``with_ipc``, not to
        remote engines."""
        check_reply_busy_wait(seconds)
        self._builder._reply_busy_wait = float(seconds)
        return self

    def with_liveness_beat(self, timeout: float) -> SubprocessConfigurer:
        """Readiness expects proof of life from an idle main loop too: 503 when neither a reply nor
        a ``Heartbeat`` reached ``response_q`` within ``timeout`` seconds (a plain loop puts
        ``Heartbeat()`` when it has nothing to do; ``Engine(..., heartbeat=s)`` beats by itself).
        Needs the health routes; call it after ``with_health``, which resets it."""
        health = self._builder._recipe.health
        if health is None:
            raise ConfigError("with_liveness_beat needs the health routes (they were turned off)")
        self._builder._recipe.health = dataclasses.replace(health, beat_timeout=timeout)
        return self

    def done(self) -> ServerBuilder:
        return self._builder


class UvicornConfigurer:
    """uvicorn settings for the serving process."""

    def __init__(self, builder: ServerBuilder) -> None:
        self._builder = builder

    def _set(self, **changes: Any) -> UvicornConfigurer:
        api = self._builder._api
        self._builder._api = dataclasses.replace(api, uvicorn=dataclasses.replace(api.uvicorn, **changes))
        return self

    def with_workers(self, workers: int) -> UvicornConfigurer:
        return self._set(workers=workers)

    def with_timeout_keep_alive(self, seconds: int) -> UvicornConfigurer:
        return self._set(timeout_keep_alive=seconds)

    def with_limit_concurrency(self, limit: int | None) -> UvicornConfigurer:
        return self._set(limit_concurrency=limit)

    def with_limit_max_requests(self, limit: int | None) -> UvicornConfigurer:
        return self._set(limit_max_requests=limit)

    def with_backlog(self, backlog: int) -> UvicornConfigurer:
        return self._set(backlog=backlog)

    def with_log_level(self, level: str) -> UvicornConfigurer:
        return self._set(log_level=level)

    def with_access_log(self, enabled: bool = True) -> UvicornConfigurer:
        return self._set(access_log=enabled)

    def with_ssl(self, keyfile: str, certfile: str) -> UvicornConfigurer:
        return self._set(ssl_keyfile=str(keyfile), ssl_certfile=str(certfile))

    def _limit(self, **changes: Any) -> UvicornConfigurer:
        limits = dataclasses.replace(self._builder._api.uvicorn.limits, **changes)
        return self._set(limits=limits)

    def with_max_body_size(self, size: int | None) -> UvicornConfigurer:
        """Largest request body in bytes (1 MiB by default, as nginx; ``None``: no limit). A larger
        ``Content-Length`` is answered 413 before anything is read; a chunked body as soon as it
        passes the limit. Either way the handler never runs and nothing reaches the main process."""
        return self._limit(max_body_size=size)

    def with_max_header_size(self, size: int) -> UvicornConfigurer:
        """Largest request head (request line and headers) in bytes, 32 KiB by default: past it,
        431 (414 when the URL alone is too long), before the app sees the request."""
        return self._limit(max_header_size=size)

    def with_max_headers(self, count: int) -> UvicornConfigurer:
        """Most request headers (100 by default); one more is answered 431."""
        return self._limit(max_headers=count)

    def with_header_timeout(self, seconds: float) -> UvicornConfigurer:
        """Seconds a client has to send a request's line and headers (30 by default), counted from
        the connection opening or, on a kept-alive connection, from the request's first byte.
        Past it: 408 and the connection closed (closed silently if nothing was sent). Bounds how
        long a slow client (slowloris) holds a connection."""
        return self._limit(header_timeout=seconds)

    def with_body_timeout(self, seconds: float | None) -> UvicornConfigurer:
        """Seconds the whole request body may take to arrive after the headers (60 by default;
        ``None``: no limit); past it, 408 and the connection closed."""
        return self._limit(body_timeout=seconds)

    def with_config(self, config: UvicornConfig) -> UvicornConfigurer:
        if not isinstance(config, UvicornConfig):
            raise ConfigError(f"expected a UvicornConfig, got {type(config).__name__}")
        self._builder._api = dataclasses.replace(self._builder._api, uvicorn=config)
        return self

    def done(self) -> ServerBuilder:
        return self._builder


class ServerBuilder:
    """Fluent builder for a ``Server``::

    server = (
        ServerBuilder("inference")
        .with_port(8000)
        .routes.with_route("/predict", predict, methods=["POST"]).done()
        .subprocess.with_ipc(request_q, response_q).done()
        .build()
    )
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"server name must be a non-empty string, got {name!r}")
        self.name = name
        self._api = ApiConfig()
        self._ipc = IPCConfig()
        self._recipe = AppRecipe()
        self._queues: tuple[Any, Any] | None = None
        self._engines: EnginesConfig | None = None
        self._start_method = "spawn"
        self._restart_policy: RestartPolicy | None = None
        self._cancel_notices = False
        self._codec: Codec | None = None
        self._gc_threshold: int | None = DEFAULT_CHILD_GC_THRESHOLD
        self._drain_timeout = DEFAULT_DRAIN_TIMEOUT
        self._outbox_limits = OutboxLimits()
        self._max_message_size = DEFAULT_MAX_MESSAGE_SIZE
        self._reply_busy_wait = 0.0
        self._routes = RouteConfigurer(self)
        self._subprocess = SubprocessConfigurer(self)
        self._uvicorn = UvicornConfigurer(self)

    @property
    def routes(self) -> RouteConfigurer:
        return self._routes

    @property
    def subprocess(self) -> SubprocessConfigurer:
        return self._subprocess

    @property
    def uvicorn(self) -> UvicornConfigurer:
        return self._uvicorn

    def with_host(self, host: str) -> ServerBuilder:
        self._api = dataclasses.replace(self._api, host=host)
        return self

    def with_port(self, port: int) -> ServerBuilder:
        """``0`` binds a free ephemeral port (``server.port`` tells which once started)."""
        self._api = dataclasses.replace(self._api, port=port)
        return self

    def with_title(self, title: str) -> ServerBuilder:
        self._api = dataclasses.replace(self._api, title=title)
        return self

    def with_description(self, description: str) -> ServerBuilder:
        self._api = dataclasses.replace(self._api, description=description)
        return self

    def with_version(self, version: str) -> ServerBuilder:
        self._api = dataclasses.replace(self._api, version=version)
        return self

    def with_timeout(self, seconds: float) -> ServerBuilder:
        """How long a request waits for the main process's reply before 504."""
        self._api = dataclasses.replace(self._api, response_timeout=seconds)
        return self

    def with_drain_timeout(self, seconds: float) -> ServerBuilder:
        """How long requests in flight get to finish when a signal stops the server (default
        10 s): SIGTERM or Ctrl-C to the main process once it started the server (the library then
        runs ``stop(seconds)``: readiness and new requests get 503 at once), or a signal sent to
        an HTTP worker itself. Requests still waiting then get 503. ``server.stop(timeout)`` called
        by your own code uses its ``timeout``. Under Kubernetes keep
        ``terminationGracePeriodSeconds`` above the ``preStop`` sleep + ``seconds`` + about 3 s."""
        check_drain_timeout(seconds)
        self._drain_timeout = float(seconds)
        return self

    def with_config(self, config: ApiConfig) -> ServerBuilder:
        if not isinstance(config, ApiConfig):
            raise ConfigError(f"expected an ApiConfig, got {type(config).__name__}")
        self._api = config
        return self

    def build(self) -> Server:
        """Checks everything that can be checked here and returns the ``Server``."""
        api = self._api
        api.check_log_file()
        api.uvicorn.check_files()
        engines = self._engines
        if engines is not None and self._queues is not None:
            raise BuildError(
                "with_ipc and with_engines both given: requests go either to this process's queues or to remote "
                "engines; keep one (an engine's own machine runs EngineHost over its queues)"
            )
        if engines is not None and self._reply_busy_wait:
            raise BuildError(
                "with_reply_busy_wait applies to the pipes of with_ipc; with remote engines the replies come over "
                "ZeroMQ and it would do nothing: drop one of the two"
            )
        codec = self._codec or PickleCodec()
        if engines is not None and isinstance(codec, PickleCodec) and not engines.allow_pickle:
            raise BuildError(
                "remote engines with the pickle codec: an engine would unpickle what the network sends, and "
                "unpickling runs code (vLLM's CVE-2025-30165). Use .with_codec(MsgspecCodec(*your_types)), or pass "
                "with_engines(..., allow_pickle=True) if only trusted hosts share the network"
            )
        if engines is not None and engines.resolver is not None and self._start_method != "fork":
            try:
                # Pickled as each worker starts, like the recipe's parts: checked the same way.
                check_sendable(engines.resolver)
            except Exception as exc:
                raise BuildError(
                    f"resolver {engines.resolver!r} cannot be sent to the HTTP worker processes ({exc}); "
                    "define it at module level"
                ) from None
        subprocess_mode = self._queues is not None or engines is not None
        if api.uvicorn.workers > 1 and not subprocess_mode:
            raise BuildError(
                f"workers={api.uvicorn.workers} needs subprocess mode: add .subprocess.with_ipc(request_q, response_q) "
                "and the server runs that many HTTP worker processes on one port, all linked to this process"
            )
        if not subprocess_mode and api.log_file is not None:
            raise BuildError(
                "log_file isolates the HTTP child's output; it needs subprocess mode (.subprocess.with_ipc). "
                "In direct mode uvicorn logs through this process's logging"
            )
        body_limit = api.uvicorn.limits.max_body_size
        if subprocess_mode and body_limit is not None and body_limit > self._max_message_size:
            # A body the worker lets in but could never send: refused here rather than with a 413
            # that contradicts the configured limit.
            raise ConfigError(
                f"max_body_size ({body_limit} bytes) is over max_message_size ({self._max_message_size} bytes), the "
                "largest request a worker may send to the main process: raise it too, "
                ".subprocess.with_max_message_size(...), or lower the body limit"
            )
        recipe = dataclasses.replace(
            self._recipe,
            title=api.title,
            description=api.description,
            version=api.version,
            routes=list(self._recipe.routes),
            routers=list(self._recipe.routers),
            middleware=list(self._recipe.middleware),
            exception_handlers=list(self._recipe.exception_handlers),
            limits=api.uvicorn.limits,
        )
        if subprocess_mode and self._start_method != "fork":
            recipe.prepare_for_spawn(self._start_method)
        spec = ServerSpec(
            name=self.name,
            recipe=recipe,
            api=api,
            ipc=self._ipc,
            codec=codec,
            start_method=self._start_method,
            restart_policy=self._restart_policy,
            cancel_notices=self._cancel_notices,
            gc_threshold=self._gc_threshold,
            signal_drain_timeout=self._drain_timeout,
            outbox_limits=self._outbox_limits,
            max_message_size=self._max_message_size,
            reply_busy_wait=self._reply_busy_wait,
            engines=engines,
        )
        if engines is not None:
            # The workers' pipes to this process still carry ready, metrics and drain; no request
            # crosses them, so the relay behind them reads queues of its own that stay empty.
            return Server(spec, queue.Queue(), queue.Queue())
        request_q, response_q = self._queues or (None, None)
        return Server(spec, request_q, response_q)
