"""Keeps N HTTP workers running.

Design: endpoint threads report a worker that became ready or died by putting an event on a
queue; one supervisor thread blocks on that queue (waking early only for the next due timer: a
restart whose backoff is over, a replacement's start-up deadline) and acts. No polling.

A worker that dies without ``stop()`` asking is replaced in its slot after the delay the
``RestartBudget`` gives: none for a worker that served, a growing one for a crash loop. Each slot
has its own timers, so one slot's backoff never holds another's restart up. A slot whose
start-ups keep failing is given up: logged as an error naming the cause, reported through
``on_exit``, and once no slot is left, through ``on_all_down``. Without a policy a dead worker's
slot is simply dropped. ``stop()`` drains every worker at once, then terminates and finally kills
what is left.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal

from isolated_api.main.main_guard import UNGUARDED_MAIN_EXIT_CODE, UNGUARDED_MAIN_HINT
from isolated_api.main.worker_process import Worker, WorkerRecipe, spawn_worker
from isolated_api.shared.restart_policy import Death, RestartBudget

logger = logging.getLogger("isolated_api.supervisor")


@dataclass(frozen=True)
class WorkerExit:
    """What the main process hears when a worker dies on its own."""

    slot: int
    exitcode: int | None
    abandoned: list[Hashable]
    restarting: bool
    # How it ended, in words ("was killed by SIGKILL after serving", ...).
    cause: str = ""
    # Seconds until its replacement starts (None: not replaced).
    delay: float | None = None
    # Set when this death made the supervisor give up on the slot: why.
    gave_up: str | None = None


ExitCallback = Callable[[WorkerExit], None]


class StartupError(RuntimeError):
    """The HTTP workers could not be started."""


class UnguardedMainError(StartupError):
    """The main script starts the server at import time, so every spawned worker would too."""


Event = tuple[Literal["ready", "lost"], Worker]


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
        self._events: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        # Timers of the supervisor thread, by slot: when a restart is due; by when a replacement
        # must be ready.
        self._restart_at: dict[int, float] = {}
        self._ready_by: dict[int, float] = {}
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
                raise self._startup_error(worker)
        self._thread = threading.Thread(target=self._supervise, name="isolated-api-supervisor", daemon=True)
        self._thread.start()
        return started

    def _startup_error(self, worker: Worker) -> StartupError:
        code = worker.manager.exitcode
        if code == UNGUARDED_MAIN_EXIT_CODE:
            return UnguardedMainError(UNGUARDED_MAIN_HINT.format(method=self._recipe.spec.start_method))
        if code is None:
            message = f"HTTP worker {worker.slot} did not start within {self._startup_timeout:g} s"
        else:
            message = f"HTTP worker {worker.slot} exited during start-up with code {code}"
        return StartupError(message + self._output_hint())

    def _output_hint(self) -> str:
        log_file = self._recipe.spec.api.log_file
        # A worker that died before its output was redirected never created the file.
        if log_file is None or not os.path.exists(log_file):
            return "; its output went to this process's stderr"
        return f"; see {log_file}"

    def _spawn(self, slot: int) -> Worker:
        with self._lock:
            self._incarnations += 1
            incarnation = self._incarnations
        worker = spawn_worker(
            self._recipe,
            slot,
            incarnation,
            on_lost=lambda w: self._events.put(("lost", w)),
            on_ready=lambda w: self._events.put(("ready", w)),
        )
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
            try:
                event: Event | None = self._events.get(timeout=self._until_next_timer())
            except queue.Empty:  # a timer is due
                event = None
                if self._stopping.is_set():
                    return
            else:
                if event is None or self._stopping.is_set():
                    return
            if event is not None:
                kind, worker = event
                if not worker.stopping and self._slots[worker.slot] is worker:
                    if kind == "lost":
                        self._died(worker)
                    else:
                        self._became_ready(worker)
            self._run_due_timers()

    def _until_next_timer(self) -> float | None:
        timers = [*self._restart_at.values(), *self._ready_by.values()]
        if not timers:
            return None  # nothing is due: block until an event
        return max(0.0, min(timers) - time.monotonic())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        for slot, due in list(self._restart_at.items()):
            if due <= now and not self._stopping.is_set():
                del self._restart_at[slot]
                self._spawn(slot)
                self._ready_by[slot] = time.monotonic() + self._startup_timeout
        for slot, due in list(self._ready_by.items()):
            worker = self._slots[slot]
            if due <= now and worker is not None:
                # Never ready: end it; its death comes back as a failed start-up.
                del self._ready_by[slot]
                worker.start_failure = f"was not ready within {self._startup_timeout:g} s"
                logger.warning("HTTP worker %d (pid %s) %s; ending it", slot, worker.manager.pid, worker.start_failure)
                if worker.process is not None:
                    worker.process.kill()

    def _became_ready(self, worker: Worker) -> None:
        if self._ready_by.pop(worker.slot, None) is None:
            return  # one of the first workers: start() saw it ready
        self.restart_count += 1
        logger.info("HTTP worker %d restarted (pid %s)", worker.slot, worker.manager.pid)

    def _died(self, dead: Worker) -> None:
        dead.manager.join(self._recipe.spec.kill_timeout)
        self._ready_by.pop(dead.slot, None)
        ready_for = None if dead.ready_at is None else (dead.lost_at or time.monotonic()) - dead.ready_at
        death = Death(ready_for=ready_for, served=dead.served())
        dead.lifeline.close()
        budget = self._budgets[dead.slot] if self._budgets else None
        delay = budget.next_delay(death) if budget else None
        cause = self._cause(dead, death)
        gave_up = None
        if delay is None and budget is not None:
            gave_up = (
                f"gave up on HTTP worker {dead.slot}: {budget.failed_starts} start-up(s) in a row failed "
                f"(the last {cause}){self._output_hint()}"
            )
        if delay is None:
            plan = "not restarting" if gave_up else "not restarting (auto-restart is off)"
        else:
            plan = "restarting at once" if delay == 0 else f"restarting in {delay:.2f} s (crash loop)"
        logger.warning(
            "HTTP worker %d (pid %s) %s; %d request(s) abandoned; %s",
            dead.slot,
            dead.manager.pid,
            cause,
            len(dead.abandoned),
            plan,
        )
        self._notify(
            WorkerExit(dead.slot, dead.manager.exitcode, dead.abandoned, delay is not None, cause, delay, gave_up)
        )
        if delay is None:
            self._give_up(dead, gave_up)
        else:
            self._restart_at[dead.slot] = time.monotonic() + delay

    def _cause(self, dead: Worker, death: Death) -> str:
        code = dead.manager.exitcode
        if dead.start_failure is not None:
            how = dead.start_failure
        elif code == UNGUARDED_MAIN_EXIT_CODE:
            how = f"exited with code {code} (the main script starts the server when imported)"
        elif code is not None and code < 0:
            how = f"was killed by {_signal_name(-code)}"
        else:
            how = f"exited with code {code}"
        if death.ready_for is None:
            return f"{how} before it was ready"
        if death.served:
            return f"{how} after serving"
        return f"{how} {death.ready_for:.1f} s after it was ready, without serving a request"

    def _give_up(self, dead: Worker, reason: str | None) -> None:
        with self._lock:
            if self._slots[dead.slot] is dead:
                self._slots[dead.slot] = None
            all_down = all(w is None for w in self._slots)
        if reason is not None:
            self.gave_up = True
            logger.error("%s", reason)
        if all_down and not self._stopping.is_set():
            self._on_all_down()

    def _notify(self, event: WorkerExit) -> None:
        try:
            self._on_exit(event)
        except Exception:
            logger.exception("worker exit callback failed")

    # -- stop --------------------------------------------------------------------------------

    def stop(self, timeout: float, on_draining: Callable[[], None] | None = None) -> None:
        """Drains all workers together for up to ``timeout`` s, then terminates and kills.
        ``on_draining`` runs once every worker was told to drain (nothing restarts any more)."""
        with self._lock:
            self._stopping.set()
            workers = [w for w in self._slots if w is not None]
            self._slots = [None] * self._count
        self._events.put(None)
        for worker in workers:
            worker.stopping = True
            worker.endpoint.send_drain(timeout)
        if on_draining is not None:
            on_draining()
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


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
