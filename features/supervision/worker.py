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

from features.codecs.codec import Codec
from features.ipc.pipe_endpoint import PipeEndpoint
from features.ipc.relay import Relay
from features.subprocess_runtime.manager import SubprocessManager

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

    relay: Relay
    target: Callable[..., Any]
    make_args: ArgsFactory
    log_file: str | None
    start_method: str
    kill_timeout: float
    name: str
    facts: Callable[[], dict[str, Any]] | None = None
    on_metrics: Callable[[dict[str, Any]], None] | None = None
    render_metrics: Callable[[], bytes] | None = None
    codec: Codec | None = None


def spawn_worker(recipe: WorkerRecipe, slot: int, incarnation: int, on_lost: Callable[[Worker], None]) -> Worker:
    uplink_r, uplink_w = multiprocessing.Pipe(duplex=False)
    downlink_r, downlink_w = multiprocessing.Pipe(duplex=False)
    lifeline_r, lifeline_w = multiprocessing.Pipe(duplex=False)
    # Under fork the child inherits our ends too and must close them, or it would never see EOF.
    parent_fds = (uplink_r.fileno(), downlink_w.fileno(), lifeline_w.fileno()) if recipe.start_method == "fork" else ()
    manager = SubprocessManager(
        recipe.target,
        recipe.make_args(uplink_w, downlink_r, lifeline_r, parent_fds),
        log_file=recipe.log_file,
        shutdown_timeout=recipe.kill_timeout,
        start_method=recipe.start_method,
        name=f"{recipe.name}-http-{slot}.{incarnation}",
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
        facts=recipe.facts,
        on_metrics=recipe.on_metrics,
        render_metrics=recipe.render_metrics,
        codec=recipe.codec,
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
