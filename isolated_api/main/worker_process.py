"""One incarnation of one HTTP worker: its process, its private pipes to the relay, and its
lifeline. Every incarnation gets new pipes, so nothing a killed predecessor left half-written
can reach it.

The lifeline is a socket pair: the worker blocks reading its end to learn of this process's death
(end-of-file), and writes one byte into it once its first HTTP request is done (answered, or
failed with a 500), which the supervisor reads once the worker is dead to tell a worker that
served from one caught in a crash loop. A byte rather than a frame on the uplink: the worker may
die a moment after that response."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from isolated_api.main.pipe_endpoint import PipeEndpoint, ServerHooks
from isolated_api.main.pipe_size import grow_pipe
from isolated_api.main.relay import Relay
from isolated_api.main.shared_requests import MainArena
from isolated_api.main.subprocess_manager import SubprocessManager
from isolated_api.shared import arena as arenas
from isolated_api.shared.arena import ArenaHandle
from isolated_api.shared.spec import ServerSpec

logger = logging.getLogger("isolated_api.supervisor")
_warned_no_memfd: list[bool] = []


def _new_arena(spec: ServerSpec) -> tuple[MainArena, ArenaHandle] | tuple[None, None]:
    """This incarnation's arena for shared payloads, if they are on and the system has memfd."""
    shared = spec.ipc.shared_payloads
    if shared is None:
        return None, None
    if arenas.available():
        try:
            arena, child_fd = arenas.Arena.create(shared.arena_size)
            return MainArena(arena, shared.min_size), ArenaHandle(child_fd, shared.arena_size)
        except OSError as exc:
            reason = f"the arena could not be created: {exc}"
    else:
        reason = "this system has no os.memfd_create"
    if not _warned_no_memfd:
        _warned_no_memfd.append(True)
        logger.warning("shared payloads are off, every payload takes the pipes: %s", reason)
    return None, None


# (uplink writer, downlink reader, the child's end of the lifeline, parent-only fds) -> the child's arguments.
ArgsFactory = Callable[[Connection, Connection, Connection, tuple[int, ...]], tuple[Any, ...]]


class Lifeline:
    """This process's end of one worker's lifeline. Closed by whichever thread gets there first:
    the supervisor's when the worker dies, ``stop()``'s caller, or a start that found the server
    stopping. The lock makes that one close: two threads inside ``Connection.close`` at once both
    close its descriptor, and the second close fails (EBADF, seen in CI) or closes whatever file
    was given that number in between."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def served(self) -> bool:
        """Whether the worker wrote its byte (its first request was done); ask once it is dead
        (this reads the byte). False once closed."""
        with self._lock:
            try:
                # Readable: the byte, or only end-of-file (the dead worker's end is closed).
                return self.conn.poll(0) and os.read(self.conn.fileno(), 1) != b""
            except OSError:
                return False

    def close(self) -> None:
        """Safe from any thread, and to call twice."""
        with self._lock:
            self.conn.close()


@dataclass
class Worker:
    slot: int
    incarnation: int
    manager: SubprocessManager
    endpoint: PipeEndpoint
    lifeline: Lifeline
    ready: threading.Event = field(default_factory=threading.Event)
    info: dict[str, Any] | None = None
    ready_at: float | None = None
    lost: bool = False
    lost_at: float | None = None
    abandoned: list[Hashable] = field(default_factory=list)
    stopping: bool = False
    # Why the supervisor ended it during start-up (not ready in time), if it did.
    start_failure: str | None = None

    def served(self) -> bool:
        """Whether the worker had finished a request; ask once it is dead (it reads the byte)."""
        return self.lifeline.served()

    @property
    def process(self) -> multiprocessing.process.BaseProcess | None:
        return self.manager.process

    def is_alive(self) -> bool:
        return self.manager.is_alive()


@dataclass(frozen=True)
class WorkerRecipe:
    """What every worker is made of; the supervisor adds the slot and incarnation."""

    spec: ServerSpec
    relay: Relay
    target: Callable[..., Any]
    make_args: ArgsFactory
    hooks: ServerHooks = field(default_factory=ServerHooks)


def spawn_worker(
    recipe: WorkerRecipe,
    slot: int,
    incarnation: int,
    on_lost: Callable[[Worker], None],
    on_ready: Callable[[Worker], None] | None = None,
) -> Worker:
    uplink_r, uplink_w = multiprocessing.Pipe(duplex=False)
    downlink_r, downlink_w = multiprocessing.Pipe(duplex=False)
    lifeline_r, lifeline_w = multiprocessing.Pipe(duplex=True)
    for conn in (uplink_w, downlink_w):
        grow_pipe(conn.fileno())
    # Under fork the child inherits our ends too and must close them, or it would never see EOF.
    parent_fds = (
        (uplink_r.fileno(), downlink_w.fileno(), lifeline_w.fileno()) if recipe.spec.start_method == "fork" else ()
    )
    owner, handle = _new_arena(recipe.spec)
    args = recipe.make_args(uplink_w, downlink_r, lifeline_r, parent_fds)
    if handle is not None:
        args = (*args, handle)
    manager = SubprocessManager(
        recipe.target,
        args,
        log_file=recipe.spec.api.log_file,
        shutdown_timeout=recipe.spec.kill_timeout,
        start_method=recipe.spec.start_method,
        name=f"{recipe.spec.name}-http-{slot}.{incarnation}",
    )

    # The endpoint's callbacks name ``worker``, made below from the endpoint: they run only once
    # the endpoint is started, after that.
    def ready(endpoint: PipeEndpoint, info: Any) -> None:
        worker.info = info
        worker.ready_at = time.monotonic()
        worker.ready.set()
        if on_ready is not None:
            on_ready(worker)

    def lost(endpoint: PipeEndpoint, abandoned: list[Hashable], torn: bool) -> None:
        worker.lost_at = time.monotonic()
        worker.lost = True
        worker.abandoned = abandoned
        worker.ready.set()  # wakes anyone waiting for a start that will never come
        on_lost(worker)

    endpoint = PipeEndpoint(
        recipe.relay,
        uplink_r,
        downlink_w,
        name=f"http-worker-{slot}.{incarnation}",
        on_ready=ready,
        on_lost=lost,
        hooks=recipe.hooks,
        pid_of=lambda: manager.pid,
        codec=recipe.spec.codec,
        arena=owner,
    )
    worker = Worker(slot, incarnation, manager, endpoint, Lifeline(lifeline_w))
    endpoint.start()
    try:
        manager.start()
    finally:
        # The child has its copies now; ours must go, or its death would not show as EOF here.
        for conn in (uplink_w, downlink_r, lifeline_r):
            conn.close()
        if handle is not None:
            os.close(handle.fd)
    return worker
