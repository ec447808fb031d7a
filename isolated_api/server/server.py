"""Server: runs the HTTP API in this process (direct mode) or in child processes that talk to
this one over the user's queues (subprocess mode). The two modes live in their own modules; this
class is what users hold, and what they share: the listening socket, the metrics, the facts."""

from __future__ import annotations

import logging
import multiprocessing.process
import time
from typing import Any

from fastapi import FastAPI

from isolated_api.main.metrics_book import MetricsBook
from isolated_api.main.relay import Relay
from isolated_api.server.direct_mode import DirectMode
from isolated_api.server.ipc_facts import IPCFacts
from isolated_api.server.listener import Listener
from isolated_api.server.stop_signals import SigtermStop
from isolated_api.server.subprocess_mode import ChildExitCallback, SubprocessMode
from isolated_api.shared.codecs import Codec
from isolated_api.shared.config import ApiConfig, IPCConfig
from isolated_api.shared.readiness import HealthSettings, readiness_problem
from isolated_api.shared.spec import ServerSpec
from isolated_api.worker.app import build_app
from isolated_api.worker.drain import DrainState
from isolated_api.worker.metrics_routes import MetricsHooks

logger = logging.getLogger("isolated_api.server")


class Server:
    """Built by ``ServerBuilder.build()``.

    Direct mode (no ``.subprocess.with_ipc``): ``start()`` runs uvicorn in this process and blocks.
    Subprocess mode: ``start_subprocess()`` starts the HTTP child and returns once it accepts
    connections; ``start()`` does the same and blocks until the child ends. ``stop()`` drains.
    """

    def __init__(self, spec: ServerSpec, request_q: Any = None, response_q: Any = None) -> None:
        self.name = spec.name
        self._spec = spec
        self._listener = Listener(spec.api)
        # Metrics live in this process: every worker's requests pass through here.
        self._metrics = MetricsBook(self._metrics_facts) if spec.recipe.metrics_path is not None else None
        self._app: FastAPI | None = None
        self._sigterm = SigtermStop(self.stop, spec.api.drain_timeout)
        self._subprocess: SubprocessMode | None = None
        self._direct: DirectMode | None = None
        self._ipc: IPCFacts | None = None
        if request_q is not None:
            relay = Relay(
                request_q,
                response_q,
                queue_timeout=spec.ipc.queue_timeout,
                max_pending=spec.ipc.max_pending,
                overload_status=spec.ipc.overload_status,
                retry_after=spec.ipc.retry_after,
                cancel_notices=spec.ipc.cancellation,
                observe_round_trip=self._metrics.observe_round_trip if self._metrics else None,
                codec=spec.ipc.codec,
                add_collector=self._metrics.add_collector if self._metrics else None,
            )
            self._subprocess = SubprocessMode(spec, relay, self._listener, self._metrics)
            self._ipc = IPCFacts(relay)
        else:
            self._direct = DirectMode(spec, self._listener, self._local_metrics())

    # -- facts -------------------------------------------------------------------------------

    @property
    def is_subprocess_mode(self) -> bool:
        return self._subprocess is not None

    @property
    def is_running(self) -> bool:
        """True while the API accepts requests (the child is alive, or direct-mode uvicorn serves)."""
        if self._subprocess is not None:
            return self._subprocess.is_active
        assert self._direct is not None
        return self._direct.is_running

    @property
    def port(self) -> int | None:
        """The bound port once started (meaningful with ``with_port(0)``)."""
        return self._listener.port

    @property
    def host(self) -> str:
        return self._spec.api.host

    @property
    def codec(self) -> Codec:
        """How messages cross between the workers and this process (``PickleCodec`` unless
        ``.subprocess.with_codec(...)``); decode requests and encode replies with it."""
        return self._spec.ipc.codec

    @property
    def config(self) -> ApiConfig:
        """The ``ApiConfig`` it was built with (the builder's own settings and ``.uvicorn``'s)."""
        return self._spec.api

    @property
    def ipc_config(self) -> IPCConfig:
        """The ``IPCConfig`` it was built with: every ``.subprocess`` setting."""
        return self._spec.ipc

    @property
    def app(self) -> FastAPI:
        """The FastAPI app. In subprocess mode the app that serves lives in the child; this is an
        identical copy built here, useful for ``app.openapi()`` and tests."""
        if self._direct is not None:
            return self._direct.app
        if self._app is None:
            self._app = build_app(self._spec.recipe, channel=None, drain=DrainState(), metrics=self._local_metrics())
        return self._app

    @property
    def ipc(self) -> IPCFacts | None:
        """Subprocess mode: read-only counts of the main process's end of the IPC link
        (``pending_count``, ``forwarded_count``, ``dropped_count``, ``rejected_count``,
        ``cancel_notices_sent``, ...). ``None`` in direct mode. Route handlers reach the channel
        itself as ``request.app.state.ipc_channel``."""
        return self._ipc

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
        return [] if self._subprocess is None else self._subprocess.processes

    @property
    def restart_count(self) -> int:
        """How many times a dead HTTP worker was replaced since ``start_subprocess()``."""
        return 0 if self._subprocess is None else self._subprocess.restart_count

    def add_child_exit_callback(self, callback: ChildExitCallback) -> None:
        """``callback(exitcode, abandoned_ids)`` runs (on the supervisor's thread) when an HTTP
        worker exits without ``stop()`` asking it to; ``abandoned_ids`` were awaiting replies in it."""
        if self._subprocess is not None:
            self._subprocess.exit_callbacks.append(callback)

    def health(self) -> dict[str, Any]:
        """The server's health as the main process sees it: ``running``, ``ready`` (and why
        not, by the rules ``/health/ready`` applies), ``workers_alive``, ``pending``,
        ``max_pending``, ``unread`` (requests waiting unread on request_q; None if it can't
        count), ``rejected``, ``dropped``, ``forwarded``, ``restarts``, ``uptime``,
        ``last_error``, and ``gave_up`` (why the supervisor gave up on a worker that kept failing
        to start, or None)."""
        running = self.is_running
        facts: dict[str, Any] = {"running": running, "mode": "subprocess" if self._subprocess else "direct"}
        mode = self._subprocess
        if mode is not None:
            facts.update(mode.facts())
            facts["max_pending"] = self._spec.ipc.max_pending
            # The rules /health/ready applies to the same facts, so the two never disagree.
            health = self._spec.recipe.health or HealthSettings()
            problem = None if running else facts.get("gave_up") or "not running"
            if problem is None:
                problem = readiness_problem(
                    facts,
                    channel_open=not mode.relay.is_closed,
                    deadline=health.deadline,
                    beat_timeout=health.beat_timeout,
                )
            facts.update(ready=problem is None, problem=problem)
        else:
            facts.update(ready=running, problem=None if running else "not running")
        facts["workers_alive"] = 0 if mode is None else mode.alive_count
        started_at = mode.started_at if mode is not None else self._direct.started_at if self._direct else None
        facts["uptime"] = 0.0 if started_at is None or not running else time.monotonic() - started_at
        return facts

    # -- metrics -----------------------------------------------------------------------------

    def metrics_text(self) -> bytes:
        """The server's metrics in Prometheus text format, as ``GET /metrics`` serves them."""
        if self._metrics is None:
            raise RuntimeError("metrics are off (.routes.without_metrics())")
        return self._metrics.render()

    def _metrics_facts(self) -> dict[str, Any]:
        return self._subprocess.facts() if self._subprocess is not None else {}

    def _local_metrics(self) -> MetricsHooks | None:
        # The app built in this process (direct mode, or the copy in ``app``) counts straight into the book.
        book = self._metrics
        if book is None:
            return None

        def record(method: str, route: str, status: int) -> None:
            book.add_http([((method, route, status), 1)])

        async def render() -> bytes:
            return book.render()

        return MetricsHooks(record=record, render=render)

    # -- starting and stopping ---------------------------------------------------------------

    def start(self) -> None:
        """Direct mode: serve in this process until stopped. Subprocess mode: start the HTTP
        worker(s) and block until the server stops (``stop()`` from another thread, every worker
        gone for good, or Ctrl-C, which stops it gracefully)."""
        if self._direct is not None:
            self._direct.serve()
            return
        self._start_workers(interrupt_on_sigterm=False)
        try:
            self.wait()
        except KeyboardInterrupt:
            logger.info("interrupted; stopping the HTTP child")
        finally:
            self.stop()

    def start_subprocess(self) -> multiprocessing.process.BaseProcess:
        """Starts the HTTP worker(s); returns the (first) worker's process once every worker
        accepts connections. Raises ``StartupError`` (a ``RuntimeError``) if one fails to start,
        and ``PortInUseError`` (an ``OSError``) if the port is taken.

        Called from the main thread with SIGTERM at its default, it also makes SIGTERM a graceful
        stop until ``stop()``: new requests get 503, in-flight ones finish (your loop keeps
        answering them), then your main thread gets ``KeyboardInterrupt`` as Ctrl-C gives it."""
        return self._start_workers(interrupt_on_sigterm=True)

    def _start_workers(self, *, interrupt_on_sigterm: bool) -> multiprocessing.process.BaseProcess:
        if self._subprocess is None:
            raise RuntimeError("start_subprocess() needs subprocess mode: configure .subprocess.with_ipc(...)")
        process = self._subprocess.start()
        self._sigterm.install(interrupt=interrupt_on_sigterm)
        return process

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: new requests get 503, in-flight ones get up to ``timeout`` seconds to
        finish, then the workers are terminated (SIGTERM, then SIGKILL). Twice is harmless, and
        a second stop() waits for the first. On the main thread, Ctrl-C during stop() is logged
        and ignored, and SIGTERM is given back to its default."""
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        with self._sigterm.stopping():
            if self._subprocess is not None:
                self._subprocess.stop(timeout)
            elif self._direct is not None:
                self._direct.stop(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the server has stopped (``stop()``, or every worker gone for good);
        True if it has."""
        if self._subprocess is None:
            raise RuntimeError("wait() needs subprocess mode; in direct mode start() blocks until the server stops")
        return self._subprocess.wait(timeout)
