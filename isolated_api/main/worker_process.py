"""One incarnation of one HTTP worker: its process, its private pipes to the relay, and its
lifeline. Every incarnation gets new pipes, so nothing a killed predecessor left half-written
can reach it."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from isolated_api.main.pipe_endpoint import PipeEndpoint, ServerHooks
from isolated_api.main.relay import Relay
from isolated_api.main.subprocess_manager import SubprocessManager
from isolated_api.shared.spec import ServerSpec

# (uplink writer, downlink reader, lifeline reader, parent-only fds) -> the child's arguments.
ArgsFactory = Callable[[Connection, Connection, Connection, tuple[int, ...]], tuple[Any, ...]]


@dataclass
class Worker:
    slot: int
    incarnation: int
    manager: SubprocessManager
    endpoint: PipeEndpoint
    lifeline: Connection
    ready: threading.Event = field(default_factory=threading.Event)
    info: dict[str, Any] | None = None
    lost: bool = False
    abandoned: list[Hashable] = field(default_factory=list)
    stopping: bool = False

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


def spawn_worker(recipe: WorkerRecipe, slot: int, incarnation: int, on_lost: Callable[[Worker], None]) -> Worker:
    uplink_r, uplink_w = multiprocessing.Pipe(duplex=False)
    downlink_r, downlink_w = multiprocessing.Pipe(duplex=False)
    lifeline_r, lifeline_w = multiprocessing.Pipe(duplex=False)
    # Under fork the child inherits our ends too and must close them, or it would never see EOF.
    parent_fds = (
        (uplink_r.fileno(), downlink_w.fileno(), lifeline_w.fileno()) if recipe.spec.start_method == "fork" else ()
    )
    manager = SubprocessManager(
        recipe.target,
        recipe.make_args(uplink_w, downlink_r, lifeline_r, parent_fds),
        log_file=recipe.spec.api.log_file,
        shutdown_timeout=recipe.spec.kill_timeout,
        start_method=recipe.spec.start_method,
        name=f"{recipe.spec.name}-http-{slot}.{incarnation}",
    )
    holder: list[Worker] = []

    def ready(endpoint: PipeEndpoint, info: Any) -> None:
        holder[0].info = info
        holder[0].ready.set()

    def lost(endpoint: PipeEndpoint, abandoned: list[Hashable], torn: bool) -> None:
        worker = holder[0]
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
        codec=recipe.spec.codec,
    )
    worker = Worker(slot, incarnation, manager, endpoint, lifeline_w)
    holder.append(worker)
    endpoint.start()
    try:
        manager.start()
    finally:
        # The child has its copies now; ours must go, or its death would not show as EOF here.
        for conn in (uplink_w, downlink_r, lifeline_r):
            conn.close()
    return worker
