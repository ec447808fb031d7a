"""Direct mode: uvicorn serves the app in this process, on the caller's thread, until stopped."""

from __future__ import annotations

import copy
import threading
import time

from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from isolated_api.server.listener import Listener
from isolated_api.shared.spec import ServerSpec
from isolated_api.worker.app import build_app
from isolated_api.worker.drain import DrainState
from isolated_api.worker.draining_server import DrainingServer
from isolated_api.worker.metrics_routes import MetricsHooks
from isolated_api.worker.uvicorn_config import uvicorn_config


class DirectMode:
    def __init__(self, spec: ServerSpec, listener: Listener, metrics: MetricsHooks | None) -> None:
        self._spec = spec
        self._listener = listener
        self._metrics = metrics
        self._lock = threading.Lock()
        self._drain = DrainState()
        self._app: FastAPI | None = None
        self._uvicorn: DrainingServer | None = None
        self._done = threading.Event()
        self.started_at: float | None = None

    @property
    def app(self) -> FastAPI:
        if self._app is None:
            self._app = build_app(self._spec.recipe, channel=None, drain=self._drain, metrics=self._metrics)
        return self._app

    @property
    def is_running(self) -> bool:
        server = self._uvicorn
        return server is not None and server.started and not server.should_exit

    def serve(self) -> None:
        """Blocks until ``stop()`` (or a signal) ends uvicorn."""
        with self._lock:
            if self._uvicorn is not None:
                raise RuntimeError("the server is already running")
            sock = self._listener.socket()
            # Each run drains on its own state and serves a fresh app.
            self._drain = DrainState()
            self._app = None
            self.started_at = time.monotonic()
            # This is the user's process: configure uvicorn's loggers only, as uvicorn.run would.
            log_config = copy.deepcopy(LOGGING_CONFIG)
            server = DrainingServer(
                uvicorn_config(self.app, self._spec.api, log_config),
                self._drain,
                signal_drain_timeout=self._spec.api.drain_timeout,
            )
            self._uvicorn = server
            self._done.clear()
        try:
            server.run(sockets=[sock])
        finally:
            with self._lock:
                self._uvicorn = None
                self._listener.close()
                self._done.set()

    def stop(self, timeout: float) -> None:
        server = self._uvicorn
        if server is None:
            return
        server.request_drain(timeout)
        if not self._done.wait(timeout + 2.0):
            server.force_exit = True
            self._done.wait(2.0)
