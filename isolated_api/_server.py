"""Server: runs the HTTP API in this process (direct mode) or in a child process that talks to
this one over the user's queues (subprocess mode)."""

from __future__ import annotations

import copy
import logging
import multiprocessing
import multiprocessing.process
import socket
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from features.configuration.settings import ApiConfig, IPCConfig
from features.graceful_shutdown.drain import DrainState
from features.graceful_shutdown.draining_server import DrainingServer
from features.ipc.pipe_endpoint import PipeEndpoint
from features.ipc.relay import Relay
from features.subprocess_runtime.manager import SubprocessManager
from isolated_api._app import build_app
from isolated_api._child import ChildSpec, child_main
from isolated_api._recipe import AppRecipe
from isolated_api._uvicorn import uvicorn_config

logger = logging.getLogger("isolated_api.server")

ChildExitCallback = Callable[[int | None, list[Hashable]], None]


@dataclass
class _Startup:
    ready: threading.Event = field(default_factory=threading.Event)
    info: dict[str, Any] | None = None


@dataclass
class _Child:
    manager: SubprocessManager
    endpoint: PipeEndpoint
    lifeline: Connection
    stopping: bool = False


class Server:
    """Built by ``ServerBuilder.build()``.

    Direct mode (no ``.subprocess.with_ipc``): ``start()`` runs uvicorn in this process and blocks.
    Subprocess mode: ``start_subprocess()`` starts the HTTP child and returns once it accepts
    connections; ``start()`` does the same and blocks until the child ends. ``stop()`` drains.
    """

    def __init__(
        self,
        name: str,
        *,
        recipe: AppRecipe,
        api: ApiConfig,
        ipc: IPCConfig,
        request_q: Any = None,
        response_q: Any = None,
        start_method: str = "spawn",
        startup_timeout: float = 30.0,
        kill_timeout: float = 2.0,
    ) -> None:
        self.name = name
        self._recipe = recipe
        self._api = api
        self._ipc = ipc
        self._start_method = start_method
        self._startup_timeout = startup_timeout
        self._kill_timeout = kill_timeout
        self._subprocess_mode = request_q is not None
        self._relay = Relay(request_q, response_q, queue_timeout=ipc.queue_timeout) if self._subprocess_mode else None
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._child: _Child | None = None
        self._incarnation = 0
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
            child = self._child
            return child is not None and not child.stopping and child.manager.is_alive()
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
    def config(self) -> ApiConfig:
        return self._api

    @property
    def app(self) -> FastAPI:
        """The FastAPI app. In subprocess mode the app that serves lives in the child; this is an
        identical copy built here, useful for ``app.openapi()`` and tests."""
        if self._app is None:
            self._app = build_app(self._recipe, channel=None, drain=self._drain)
        return self._app

    @property
    def ipc(self) -> Relay | None:
        """Subprocess mode: the main process's end of the IPC link (``pending_count``,
        ``dropped_count``, ``forwarded_count``). ``None`` in direct mode. Route handlers reach the
        channel itself as ``request.app.state.ipc_channel``."""
        return self._relay

    @property
    def process(self) -> multiprocessing.process.BaseProcess | None:
        child = self._child
        return None if child is None else child.manager.process

    def add_child_exit_callback(self, callback: ChildExitCallback) -> None:
        """``callback(exitcode, abandoned_ids)`` runs (on a relay thread) when an HTTP child exits
        without ``stop()`` asking it to; ``abandoned_ids`` were awaiting replies in it."""
        self._exit_callbacks.append(callback)

    # -- starting ----------------------------------------------------------------------------

    def start(self) -> None:
        """Direct mode: serve in this process until stopped. Subprocess mode: start the child and
        block until it ends (Ctrl-C stops it gracefully)."""
        if not self._subprocess_mode:
            self._serve_direct()
            return
        process = self.start_subprocess()
        try:
            process.join()
        except KeyboardInterrupt:
            logger.info("interrupted; stopping the HTTP child")
        finally:
            self.stop()

    def start_subprocess(self) -> multiprocessing.process.BaseProcess:
        """Starts the HTTP child; returns its process once it accepts connections."""
        if not self._subprocess_mode:
            raise RuntimeError("start_subprocess() needs subprocess mode: configure .subprocess.with_ipc(...)")
        assert self._relay is not None
        with self._lock:
            if self._child is not None and self._child.manager.is_alive():
                raise RuntimeError("the HTTP child is already running; stop() it first")
            self._child = None
            sock = self._listen()
            self._relay.start()
            startup = _Startup()
            child = self._spawn_child(sock, startup)
            self._child = child
        if not startup.ready.wait(self._startup_timeout) or startup.info is None:
            exitcode = child.manager.exitcode
            self.stop(timeout=0)
            where = f"; see {self._api.log_file}" if self._api.log_file else ""
            if exitcode is None:
                raise RuntimeError(f"the HTTP child did not start within {self._startup_timeout:g} s{where}")
            raise RuntimeError(f"the HTTP child exited during start-up with code {exitcode}{where}")
        process = child.manager.process
        assert process is not None
        logger.info("%s: HTTP child %s serving on %s:%s", self.name, process.pid, self._api.host, self._port)
        return process

    def _listen(self) -> socket.socket:
        # The parent binds once and hands the socket to each child: the port is known before the
        # child starts, and stays the same across children.
        if self._sock is None:
            family = socket.AF_INET6 if ":" in self._api.host else socket.AF_INET
            sock = socket.create_server(
                (self._api.host, self._api.port), family=family, backlog=self._api.uvicorn.backlog
            )
            sock.set_inheritable(True)
            self._sock = sock
            self._port = sock.getsockname()[1]
        return self._sock

    def _spawn_child(self, sock: socket.socket, startup: _Startup) -> _Child:
        assert self._relay is not None
        self._incarnation += 1
        uplink_r, uplink_w = multiprocessing.Pipe(duplex=False)
        downlink_r, downlink_w = multiprocessing.Pipe(duplex=False)
        lifeline_r, lifeline_w = multiprocessing.Pipe(duplex=False)
        parent_ends = (uplink_r, downlink_w, lifeline_w)
        spec = ChildSpec(
            recipe=self._recipe,
            api=self._api,
            ipc=self._ipc,
            signal_drain_timeout=5.0,
            parent_fds=tuple(c.fileno() for c in parent_ends) if self._start_method == "fork" else (),
        )
        manager = SubprocessManager(
            child_main,
            (spec, sock, uplink_w, downlink_r, lifeline_r),
            log_file=self._api.log_file,
            shutdown_timeout=self._kill_timeout,
            start_method=self._start_method,
            name=f"{self.name}-http-{self._incarnation}",
        )

        def on_ready(endpoint: PipeEndpoint, info: Any) -> None:
            startup.info = info
            startup.ready.set()

        def on_lost(endpoint: PipeEndpoint, abandoned: list[Hashable], torn: bool) -> None:
            startup.ready.set()
            self._child_lost(child, abandoned, torn)

        endpoint = PipeEndpoint(
            self._relay,
            uplink_r,
            downlink_w,
            name=f"http-child-{self._incarnation}",
            on_ready=on_ready,
            on_lost=on_lost,
        )
        child = _Child(manager, endpoint, lifeline_w)
        endpoint.start()
        try:
            manager.start()
        finally:
            # The child has its copies now; ours must go, or its death would not show as EOF here.
            for conn in (uplink_w, downlink_r, lifeline_r):
                conn.close()
        return child

    def _child_lost(self, child: _Child, abandoned: list[Hashable], torn: bool) -> None:
        if child.stopping:
            return
        child.manager.join(self._kill_timeout)
        exitcode = child.manager.exitcode
        logger.warning(
            "%s: HTTP child exited unexpectedly (code %s); %d request(s) abandoned%s",
            self.name,
            exitcode,
            len(abandoned),
            ", a partial message discarded" if torn else "",
        )
        with self._lock:
            if self._child is child:
                # Nobody will accept on the socket now: close it so clients are refused rather
                # than left hanging in the backlog. start_subprocess() binds again.
                self._close_socket()
        for callback in self._exit_callbacks:
            try:
                callback(exitcode, abandoned)
            except Exception:
                logger.exception("child exit callback failed")

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: new requests get 503, in-flight ones get up to ``timeout`` seconds to
        finish, then the child is terminated (SIGTERM, then SIGKILL). Calling it twice is harmless."""
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        if not self._subprocess_mode:
            self._stop_direct(timeout)
            return
        with self._lock:
            child = self._child
            if child is None or child.stopping:
                return
            child.stopping = True
        # Drain: the child refuses new requests and waits for in-flight ones.
        child.endpoint.send_drain(timeout)
        # Give it the drain time plus a moment for uvicorn to close, then make sure.
        child.manager.join(timeout + 1.0)
        child.manager.stop()
        child.endpoint.join(self._kill_timeout)
        child.lifeline.close()
        with self._lock:
            if self._child is child:
                self._child = None
            self._close_socket()
            assert self._relay is not None
            self._relay.close()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- direct mode -------------------------------------------------------------------------

    def _serve_direct(self) -> None:
        with self._lock:
            if self._uvicorn is not None:
                raise RuntimeError("the server is already running")
            sock = self._listen()
            self._drain = DrainState()
            self._app = None
            # This is the user's process: configure uvicorn's loggers only, as uvicorn.run would.
            log_config = copy.deepcopy(LOGGING_CONFIG)
            server = DrainingServer(
                uvicorn_config(self.app, self._api, log_config), self._drain, signal_drain_timeout=5.0
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
