"""Server: runs the HTTP API in this process (direct mode) or in a child process that talks to
this one over the user's queues (subprocess mode)."""

from __future__ import annotations

import copy
import logging
import multiprocessing
import multiprocessing.process
import pickle
import socket
import threading
import time
from collections.abc import Callable, Hashable
from multiprocessing.connection import Connection
from typing import Any

from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from isolated_api.main.metrics_book import MetricsBook
from isolated_api.main.pipe_endpoint import ServerHooks
from isolated_api.main.relay import Relay
from isolated_api.main.supervisor import StartupError, Supervisor, WorkerExit
from isolated_api.main.worker_process import WorkerRecipe
from isolated_api.shared.codecs import Codec
from isolated_api.shared.config import ApiConfig
from isolated_api.shared.readiness import main_process_stalled
from isolated_api.shared.spec import ServerSpec
from isolated_api.worker.app import build_app
from isolated_api.worker.child import child_main
from isolated_api.worker.drain import DrainState
from isolated_api.worker.draining_server import DrainingServer
from isolated_api.worker.metrics_routes import MetricsHooks
from isolated_api.worker.uvicorn_config import uvicorn_config

logger = logging.getLogger("isolated_api.server")

ChildExitCallback = Callable[[int | None, list[Hashable]], None]


class Server:
    """Built by ``ServerBuilder.build()``.

    Direct mode (no ``.subprocess.with_ipc``): ``start()`` runs uvicorn in this process and blocks.
    Subprocess mode: ``start_subprocess()`` starts the HTTP child and returns once it accepts
    connections; ``start()`` does the same and blocks until the child ends. ``stop()`` drains.
    """

    def __init__(self, spec: ServerSpec, request_q: Any = None, response_q: Any = None) -> None:
        self.name = spec.name
        self._spec = spec
        self._recipe = spec.recipe
        self._api = spec.api
        self._ipc = spec.ipc
        self._subprocess_mode = request_q is not None
        self._codec = spec.codec
        # Metrics live in this process: every worker's requests pass through here.
        self._metrics = MetricsBook(self._metrics_facts) if spec.recipe.metrics_path is not None else None
        self._relay = (
            Relay(
                request_q,
                response_q,
                queue_timeout=spec.ipc.queue_timeout,
                max_pending=spec.ipc.max_pending,
                overload_status=spec.ipc.overload_status,
                retry_after=spec.ipc.retry_after,
                cancel_notices=spec.cancel_notices,
                observe_round_trip=self._metrics.observe_round_trip if self._metrics else None,
                codec=spec.codec,
            )
            if self._subprocess_mode
            else None
        )
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._supervisor: Supervisor | None = None
        self._ended = threading.Event()
        self._started_at: float | None = None
        self._last_error: str | None = None
        self._exit_callbacks: list[ChildExitCallback] = []
        # Direct mode state.
        self._drain = DrainState()
        self._app: FastAPI | None = None
        self._uvicorn: DrainingServer | None = None
        self._direct_done = threading.Event()

    # -- facts -------------------------------------------------------------------------------

    @property
    def is_subprocess_mode(self) -> bool:
        return self._subprocess_mode

    @property
    def is_running(self) -> bool:
        """True while the API accepts requests (the child is alive, or direct-mode uvicorn serves)."""
        if self._subprocess_mode:
            supervisor = self._supervisor
            return supervisor is not None and supervisor.is_active
        server = self._uvicorn
        return server is not None and server.started and not server.should_exit

    @property
    def port(self) -> int | None:
        """The bound port once started (meaningful with ``with_port(0)``)."""
        return self._port

    @property
    def host(self) -> str:
        return self._api.host

    @property
    def codec(self) -> Codec:
        """How messages cross between the workers and this process (``PickleCodec`` unless
        ``.subprocess.with_codec(...)``); decode requests and encode replies with it."""
        return self._codec

    @property
    def config(self) -> ApiConfig:
        return self._api

    @property
    def app(self) -> FastAPI:
        """The FastAPI app. In subprocess mode the app that serves lives in the child; this is an
        identical copy built here, useful for ``app.openapi()`` and tests."""
        if self._app is None:
            self._app = build_app(self._recipe, channel=None, drain=self._drain, metrics=self._local_metrics())
        return self._app

    @property
    def ipc(self) -> Relay | None:
        """Subprocess mode: the main process's end of the IPC link (``pending_count``,
        ``dropped_count``, ``forwarded_count``). ``None`` in direct mode. Route handlers reach the
        channel itself as ``request.app.state.ipc_channel``."""
        return self._relay

    @property
    def process(self) -> multiprocessing.process.BaseProcess | None:
        """The first HTTP worker's process (subprocess mode, while running). The server reaps its
        workers itself: to learn how one ended, wait for ``process.exitcode`` to be set rather than
        calling ``join()`` from another thread (two threads reaping one child race in
        ``multiprocessing``)."""
        processes = self.processes
        return processes[0] if processes else None

    @property
    def processes(self) -> list[multiprocessing.process.BaseProcess]:
        """Every HTTP worker process, by slot."""
        supervisor = self._supervisor
        if supervisor is None:
            return []
        return [w.process for w in supervisor.workers if w.process is not None]

    @property
    def restart_count(self) -> int:
        """How many times a dead HTTP worker was replaced since ``start_subprocess()``."""
        supervisor = self._supervisor
        return 0 if supervisor is None else supervisor.restart_count

    def add_child_exit_callback(self, callback: ChildExitCallback) -> None:
        """``callback(exitcode, abandoned_ids)`` runs (on the supervisor's thread) when an HTTP
        worker exits without ``stop()`` asking it to; ``abandoned_ids`` were awaiting replies in
        it. See also ``add_worker_exit_callback``."""
        self._exit_callbacks.append(callback)

    # -- starting ----------------------------------------------------------------------------

    def start(self) -> None:
        """Direct mode: serve in this process until stopped. Subprocess mode: start the HTTP
        worker(s) and block until the server stops (``stop()`` from another thread, every worker
        gone for good, or Ctrl-C, which stops it gracefully)."""
        if not self._subprocess_mode:
            self._serve_direct()
            return
        self.start_subprocess()
        try:
            self._ended.wait()
        except KeyboardInterrupt:
            logger.info("interrupted; stopping the HTTP child")
        finally:
            self.stop()

    def start_subprocess(self) -> multiprocessing.process.BaseProcess:
        """Starts the HTTP worker(s); returns the (first) worker's process once every worker
        accepts connections. Raises ``RuntimeError`` if one fails to start."""
        if not self._subprocess_mode:
            raise RuntimeError("start_subprocess() needs subprocess mode: configure .subprocess.with_ipc(...)")
        relay = self._relay
        assert relay is not None
        with self._lock:
            if self._supervisor is not None and self._supervisor.is_active:
                raise RuntimeError("the HTTP server is already running; stop() it first")
            sock = self._listen()
            relay.start()
            self._ended.clear()
            self._started_at = time.monotonic()
            supervisor = Supervisor(
                self._worker_recipe(relay, sock),
                on_exit=self._worker_exited,
                on_all_down=self._all_workers_down,
            )
            self._supervisor = supervisor
        try:
            workers = supervisor.start()
        except StartupError as exc:
            self.stop(timeout=0)
            where = f"; see {self._api.log_file}" if self._api.log_file else ""
            raise RuntimeError(f"{exc}{where}") from None
        process = workers[0].process
        assert process is not None
        logger.info("%s: %d HTTP worker(s) serving on %s:%s", self.name, len(workers), self._api.host, self._port)
        return process

    def _worker_recipe(self, relay: Relay, sock: socket.socket) -> WorkerRecipe:
        # Under fork nothing is pickled (the child inherits the spec), so nothing needs to be.
        payload = self._spec if self._spec.start_method == "fork" else pickle.dumps(self._spec)

        def make_args(uplink: Connection, downlink: Connection, lifeline: Connection, fds: tuple[int, ...]) -> Any:
            return (payload, fds, sock, uplink, downlink, lifeline)

        hooks = ServerHooks(
            facts=self._main_facts,
            on_metrics=self._worker_metrics if self._metrics else None,
            render_metrics=self._metrics.render if self._metrics else None,
        )
        return WorkerRecipe(self._spec, relay, child_main, make_args, hooks)

    def _listen(self) -> socket.socket:
        # The parent binds once and hands the socket to every worker: the port is known before
        # they start, they all accept on it, and it stays the same across restarts.
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self._api.host else socket.AF_INET
            sock = socket.create_server(
                (self._api.host, self._api.port), family=family, backlog=self._api.uvicorn.backlog
            )
            sock.set_inheritable(True)
            self._sock = sock
            self._port = sock.getsockname()[1]
        return self._sock

    def _worker_metrics(self, report: dict[str, Any]) -> None:
        assert self._metrics is not None
        self._metrics.add_http(report["http"])
        self._metrics.add_worker_counts(report["rejected"], report["dropped"])

    def _metrics_facts(self) -> dict[str, Any]:
        return self._main_facts() if self._relay is not None else {}

    def metrics_text(self) -> bytes:
        """The server's metrics in Prometheus text format, as ``GET /metrics`` serves them."""
        if self._metrics is None:
            raise RuntimeError("metrics are off (.routes.without_metrics())")
        return self._metrics.render()

    def _main_facts(self) -> dict[str, Any]:
        assert self._relay is not None
        return {**self._relay.facts(), "restarts": self.restart_count, "last_error": self._last_error}

    def health(self) -> dict[str, Any]:
        """The server's health as the main process sees it: ``running``, ``ready`` (and why
        not), ``workers_alive``, ``pending``, ``max_pending``, ``rejected``, ``dropped``,
        ``forwarded``, ``restarts``, ``uptime``, ``last_error``."""
        supervisor = self._supervisor
        running = self.is_running
        facts: dict[str, Any] = {"running": running, "mode": "subprocess" if self._subprocess_mode else "direct"}
        if self._relay is not None:
            facts.update(self._main_facts())
            facts["max_pending"] = self._ipc.max_pending
            deadline = self._recipe.health.deadline if self._recipe.health else 1.0
            problem = None if running else "not running"
            if problem is None and main_process_stalled(facts, deadline):
                problem = f"the main process has not answered for {facts['last_reply_age']:.1f} s"
            facts.update(ready=problem is None, problem=problem)
        else:
            facts.update(ready=running, problem=None if running else "not running")
        facts["workers_alive"] = 0 if supervisor is None else supervisor.alive_count
        facts["uptime"] = 0.0 if self._started_at is None or not running else time.monotonic() - self._started_at
        return facts

    def _worker_exited(self, event: WorkerExit) -> None:
        self._last_error = f"HTTP worker {event.slot} exited with code {event.exitcode}" + (
            f", abandoning {len(event.abandoned)} request(s)" if event.abandoned else ""
        )
        for callback in self._exit_callbacks:
            try:
                callback(event.exitcode, event.abandoned)
            except Exception:
                logger.exception("child exit callback failed")

    def _all_workers_down(self) -> None:
        # Nobody will accept on the socket now: close it so clients are refused rather than left
        # hanging in the backlog. start_subprocess() binds again.
        with self._lock:
            self._close_socket()
        self._ended.set()

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: new requests get 503, in-flight ones get up to ``timeout`` seconds to
        finish, then the workers are terminated (SIGTERM, then SIGKILL). Twice is harmless."""
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        if not self._subprocess_mode:
            self._stop_direct(timeout)
            return
        with self._lock:
            supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        supervisor.stop(timeout)
        with self._lock:
            self._close_socket()
            assert self._relay is not None
            self._relay.close()
        self._ended.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the server has stopped (``stop()``, or every worker gone for good);
        True if it has."""
        return self._ended.wait(timeout)

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- direct mode -------------------------------------------------------------------------

    def _local_metrics(self) -> MetricsHooks | None:
        book = self._metrics
        if book is None:
            return None

        def record(method: str, route: str, status: int) -> None:
            book.add_http([((method, route, status), 1)])

        async def render() -> bytes:
            return book.render()

        return MetricsHooks(record=record, render=render)

    def _serve_direct(self) -> None:
        with self._lock:
            if self._uvicorn is not None:
                raise RuntimeError("the server is already running")
            sock = self._listen()
            self._drain = DrainState()
            self._app = None
            self._started_at = time.monotonic()
            # This is the user's process: configure uvicorn's loggers only, as uvicorn.run would.
            log_config = copy.deepcopy(LOGGING_CONFIG)
            server = DrainingServer(
                uvicorn_config(self.app, self._api, log_config),
                self._drain,
                signal_drain_timeout=self._spec.signal_drain_timeout,
            )
            self._uvicorn = server
            self._direct_done.clear()
        try:
            server.run(sockets=[sock])
        finally:
            with self._lock:
                self._uvicorn = None
                self._close_socket()
                self._direct_done.set()

    def _stop_direct(self, timeout: float) -> None:
        server = self._uvicorn
        if server is None:
            return
        server.request_drain(timeout)
        if not self._direct_done.wait(timeout + 2.0):
            server.force_exit = True
            self._direct_done.wait(2.0)
