"""Subprocess mode: the HTTP workers run in child processes that a supervisor keeps alive, each
linked to this process's relay by private pipes; the relay alone reads and writes the user's
queues."""

from __future__ import annotations

import logging
import multiprocessing.process
import threading
import time
from collections.abc import Callable, Hashable
from multiprocessing.connection import Connection
from typing import Any

from isolated_api.main.main_guard import exit_if_preparing_a_worker
from isolated_api.main.metrics_book import MetricsBook
from isolated_api.main.pipe_endpoint import ServerHooks
from isolated_api.main.relay import Relay
from isolated_api.main.supervisor import StartupError, Supervisor, WorkerExit
from isolated_api.main.worker_process import WorkerRecipe
from isolated_api.server.listener import Listener
from isolated_api.server.start_report import announce_start
from isolated_api.shared.spawn_payload import SpawnPayload
from isolated_api.shared.spec import ServerSpec
from isolated_api.worker.child import child_main

logger = logging.getLogger("isolated_api.server")

ChildExitCallback = Callable[[int | None, list[Hashable]], None]


class SubprocessMode:
    def __init__(self, spec: ServerSpec, relay: Relay, listener: Listener, metrics: MetricsBook | None) -> None:
        self._spec = spec
        self.relay = relay
        self._listener = listener
        self._metrics = metrics
        self._lock = threading.RLock()
        # Held for a whole stop(): a second caller (SIGTERM's thread and the main thread's
        # finally) returns only once the workers are gone.
        self._stop_lock = threading.Lock()
        self._supervisor: Supervisor | None = None
        self._ended = threading.Event()
        self.started_at: float | None = None
        self.last_error: str | None = None
        # Why the supervisor gave up on a worker's slot, if it did (kept after stop()).
        self.gave_up: str | None = None
        self.exit_callbacks: list[ChildExitCallback] = []

    # -- facts -------------------------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        supervisor = self._supervisor
        return supervisor is not None and supervisor.is_active

    @property
    def processes(self) -> list[multiprocessing.process.BaseProcess]:
        supervisor = self._supervisor
        if supervisor is None:
            return []
        return [w.process for w in supervisor.workers if w.process is not None]

    @property
    def restart_count(self) -> int:
        supervisor = self._supervisor
        return 0 if supervisor is None else supervisor.restart_count

    @property
    def alive_count(self) -> int:
        supervisor = self._supervisor
        return 0 if supervisor is None else supervisor.alive_count

    def facts(self) -> dict[str, Any]:
        """What a worker's readiness probe and the metrics report of the main process."""
        return {
            **self.relay.facts(),
            "restarts": self.restart_count,
            "last_error": self.last_error,
            "gave_up": self.gave_up,
        }

    # -- starting ----------------------------------------------------------------------------

    def start(self) -> multiprocessing.process.BaseProcess:
        # Before anything binds or spawns: a worker re-running a script that starts the server
        # at its top level ends here, quietly, and the main process explains why.
        exit_if_preparing_a_worker()
        with self._lock:
            if self._supervisor is not None and self._supervisor.is_active:
                raise RuntimeError("the HTTP server is already running; stop() it first")
            recipe = self._worker_recipe()
            self.relay.start()
            self._ended.clear()
            self.gave_up = None
            self.started_at = time.monotonic()
            supervisor = Supervisor(recipe, on_exit=self._worker_exited, on_all_down=self._all_workers_down)
            self._supervisor = supervisor
        try:
            workers = supervisor.start()
        except StartupError as exc:
            self.stop(timeout=0)
            # One error with one line: what failed, and where its output is.
            raise exc from None
        process = workers[0].process
        assert process is not None
        port = self._listener.port
        assert port is not None
        announce_start(self._spec, port, [w.manager.pid for w in workers])
        return process

    def _worker_recipe(self) -> WorkerRecipe:
        sock = self._listener.socket()
        # Pickled by multiprocessing as each worker starts (restarts included), inside its spawning
        # context; under fork nothing is pickled.
        payload = SpawnPayload(self._spec)

        def make_args(uplink: Connection, downlink: Connection, lifeline: Connection, fds: tuple[int, ...]) -> Any:
            return (payload, fds, sock, uplink, downlink, lifeline)

        book = self._metrics
        hooks = ServerHooks(
            facts=self.facts,
            on_metrics=self._worker_metrics if book else None,
            render_metrics=book.render if book else None,
            outbox=self._spec.ipc.stalled_worker_limits,
            max_frame=self._spec.ipc.max_message_size,
        )
        return WorkerRecipe(self._spec, self.relay, child_main, make_args, hooks)

    def _worker_metrics(self, report: dict[str, Any]) -> None:
        assert self._metrics is not None
        self._metrics.add_http(report["http"])
        self._metrics.add_worker_counts(report["rejected"], report["dropped"])

    # -- workers ending on their own -----------------------------------------------------------

    def _worker_exited(self, event: WorkerExit) -> None:
        self.last_error = f"HTTP worker {event.slot} exited with code {event.exitcode}" + (
            f", abandoning {len(event.abandoned)} request(s)" if event.abandoned else ""
        )
        if event.gave_up is not None:
            self.gave_up = event.gave_up
        for callback in self.exit_callbacks:
            try:
                callback(event.exitcode, event.abandoned)
            except Exception:
                logger.exception("child exit callback failed")

    def _all_workers_down(self) -> None:
        # Nobody will accept on the socket now: close it so clients are refused rather than left
        # hanging in the backlog. start() binds again.
        with self._lock:
            self._listener.close()
        self._ended.set()

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        with self._stop_lock:
            with self._lock:
                supervisor, self._supervisor = self._supervisor, None
            if supervisor is None:
                return
            supervisor.stop(timeout, on_draining=self._let_go_of_the_port)
            with self._lock:
                self._listener.close()
                self.relay.close()
            self._ended.set()

    def _let_go_of_the_port(self) -> None:
        # Once the workers drain nothing restarts, so this process's copy of the listening socket
        # only kept the port open after the last worker closed its own: connections then waited
        # in the backlog and were reset when stop() closed it (~0.2 s seen behind nginx; a client
        # can't tell whether a reset POST ran). Closed now, the port closes with the last worker's
        # copy, and later connections are refused, which says plainly that nothing ran.
        with self._lock:
            self._listener.close()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)
