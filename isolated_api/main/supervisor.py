"""Keeps N HTTP workers running.

Design: endpoint threads report a dead worker by putting an event on a queue; one supervisor
thread blocks on that queue and acts (no polling). A worker that dies without ``stop()`` asking
is replaced in its slot after the policy's backoff; without a policy, or once the budget is spent,
the slot is given up, logged, and reported through ``on_exit``. ``stop()`` drains every worker at
once, then terminates and finally kills what is left.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from isolated_api.main.worker_process import Worker, WorkerRecipe, spawn_worker
from isolated_api.shared.restart_policy import RestartBudget

logger = logging.getLogger("isolated_api.supervisor")


@dataclass(frozen=True)
class WorkerExit:
    """What the main process hears when a worker dies on its own."""

    slot: int
    exitcode: int | None
    abandoned: list[Hashable]
    restarting: bool


ExitCallback = Callable[[WorkerExit], None]


class StartupError(RuntimeError):
    """The HTTP workers could not be started."""


class Supervisor:
    def __init__(
        self,
        recipe: WorkerRecipe,
        *,
        on_exit: Callable[[WorkerExit], None],
        on_all_down: Callable[[], None],
    ) -> None:
        self._recipe = recipe
        workers = recipe.spec.api.uvicorn.workers
        policy = recipe.spec.restart_policy
        self._count = workers
        self._policy = policy
        self._startup_timeout = recipe.spec.startup_timeout
        self._on_exit = on_exit
        self._on_all_down = on_all_down
        self._lock = threading.Lock()
        self._slots: list[Worker | None] = [None] * workers
        self._budgets = [RestartBudget(policy) for _ in range(workers)] if policy else []
        self._incarnations = 0
        self._events: queue.SimpleQueue[Worker | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.restart_count = 0
        self.gave_up = False

    # -- facts -------------------------------------------------------------------------------

    @property
    def workers(self) -> list[Worker]:
        return [w for w in self._slots if w is not None]

    @property
    def alive_count(self) -> int:
        return sum(1 for w in self.workers if not w.lost and w.is_alive())

    @property
    def is_active(self) -> bool:
        """Serving or recovering: not stopped, and some slot is still held."""
        return not self._stopping.is_set() and any(w is not None for w in self._slots)

    # -- start -------------------------------------------------------------------------------

    def start(self) -> list[Worker]:
        """Starts every worker and returns once all accept connections; if one fails, stops the
        others and raises ``StartupError`` (a failing start-up is never retried in a loop)."""
        started = [self._spawn(slot) for slot in range(self._count)]
        deadline = time.monotonic() + self._startup_timeout
        for worker in started:
            worker.ready.wait(max(0.0, deadline - time.monotonic()))
            if worker.info is None:
                self.stop(0.0)
                worker.manager.join(self._recipe.spec.kill_timeout)
                code = worker.manager.exitcode
                if code is None:
                    raise StartupError(f"HTTP worker {worker.slot} did not start within {self._startup_timeout:g} s")
                raise StartupError(f"HTTP worker {worker.slot} exited during start-up with code {code}")
        self._thread = threading.Thread(target=self._supervise, name="isolated-api-supervisor", daemon=True)
        self._thread.start()
        return started

    def _spawn(self, slot: int) -> Worker:
        with self._lock:
            self._incarnations += 1
            incarnation = self._incarnations
        worker = spawn_worker(self._recipe, slot, incarnation, self._events.put)
        with self._lock:
            orphaned = self._stopping.is_set()
            if not orphaned:
                self._slots[slot] = worker
        if orphaned:  # stop() ran while this one was starting: it must not outlive the server
            worker.stopping = True
            worker.manager.stop(0.0)
            worker.lifeline.close()
        return worker

    # -- supervise ---------------------------------------------------------------------------

    def _supervise(self) -> None:
        while True:
            worker = self._events.get()
            if worker is None or self._stopping.is_set():
                return
            if worker.stopping or self._slots[worker.slot] is not worker:
                continue
            self._replace(worker)

    def _replace(self, dead: Worker) -> None:
        dead.manager.join(self._recipe.spec.kill_timeout)
        delay = self._budgets[dead.slot].next_delay() if self._budgets else None
        restarting = delay is not None
        logger.warning(
            "HTTP worker %d (pid %s) exited with code %s; %d request(s) abandoned; %s",
            dead.slot,
            dead.manager.pid,
            dead.manager.exitcode,
            len(dead.abandoned),
            f"restarting in {delay:.2f} s" if restarting else "not restarting",
        )
        self._notify(WorkerExit(dead.slot, dead.manager.exitcode, dead.abandoned, restarting))
        if delay is None:
            self._give_up(dead)
            return
        # Interruptible by stop(); a plain sleep would hold stop() up for the whole backoff.
        if self._stopping.wait(delay):
            return
        replacement = self._spawn(dead.slot)
        replacement.ready.wait(self._startup_timeout)
        if replacement.info is not None:
            self.restart_count += 1
            logger.info("HTTP worker %d restarted (pid %s)", dead.slot, replacement.manager.pid)
        # A replacement that died during start-up comes back through the event queue and is
        # weighed against the budget like any other death.

    def _give_up(self, dead: Worker) -> None:
        with self._lock:
            if self._slots[dead.slot] is dead:
                self._slots[dead.slot] = None
            all_down = all(w is None for w in self._slots)
        if self._policy is not None:
            self.gave_up = True
            logger.error("HTTP worker %d keeps dying: restart budget spent, giving up on it", dead.slot)
        if all_down and not self._stopping.is_set():
            self._on_all_down()

    def _notify(self, event: WorkerExit) -> None:
        try:
            self._on_exit(event)
        except Exception:
            logger.exception("worker exit callback failed")

    # -- stop --------------------------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        """Drains all workers together for up to ``timeout`` s, then terminates and kills."""
        with self._lock:
            self._stopping.set()
            workers = [w for w in self._slots if w is not None]
            self._slots = [None] * self._count
        self._events.put(None)
        for worker in workers:
            worker.stopping = True
            worker.endpoint.send_drain(timeout)
        # Drain time plus a moment for uvicorn to close its sockets.
        deadline = time.monotonic() + timeout + 1.0
        for worker in workers:
            worker.manager.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.is_alive():
                worker.manager.process.terminate()  # type: ignore[union-attr]
        for worker in workers:
            worker.manager.stop()
            worker.endpoint.join(self._recipe.spec.kill_timeout)
            worker.lifeline.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self._recipe.spec.kill_timeout)
