"""What a batcher (``engine.batch``) and a stepper (``engine.steps``) share: a queue of members
waiting on the engine's loop, bounded by ``max_queued``, and the engine's resources they run on.

Members are not counted by the intake's ``concurrency + max_waiting + 1`` (a batch of 32 could
never form behind it): the intake hands them over at once, and the group counts them against its
own ``max_queued``. When that is reached the group closes the intake's gate, so nothing more is
read from ``request_q`` until a batch takes members out: the queue fills and the HTTP side answers
503 as it does for a busy engine. The intake may already have read a few messages (at most its
read-ahead) when the gate closes; they are queued, not refused, so a group can exceed
``max_queued`` by that much.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from isolated_api.engine.job import Job, ReplySink
from isolated_api.engine.metrics import EngineMetrics

logger = logging.getLogger("isolated_api.engine")

STOPPED_REASON = "engine stopped"  # the cancel reason stop() gives what it ends


@dataclass(frozen=True)
class GroupRuntime:
    """The engine's resources, handed to each group when the engine's loop starts."""

    loop: asyncio.AbstractEventLoop
    slots: asyncio.Semaphore  # the engine's concurrency: a running batch or a stepper holds one
    pool: Executor  # where sync user functions run
    sink: ReplySink
    hold_intake: Callable[[object, bool], None]  # (group, full): stop or resume reading request_q
    finish: Callable[[Job, bool], None]  # (job, failed): the job left the engine
    metrics: EngineMetrics
    meet_server: Callable[[Group], bool]  # a member arrived: find the server (warnings, metrics); True once found


def is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


async def call(rt: GroupRuntime, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``: awaited when ``async def``, else run in a worker thread of the engine's pool."""
    if is_async(fn):
        return await fn(*args)
    result = await rt.loop.run_in_executor(rt.pool, fn, *args)
    if inspect.iscoroutine(result):  # an async function behind a wrapper (functools.partial, a lambda)
        return await result
    return result


class Group(ABC):
    """A queue of members for one request type; subclasses say how members are served."""

    def __init__(self, name: str, max_queued: int, capacity: int) -> None:
        self.name = name
        self.max_queued = max_queued
        self.capacity = capacity  # members served at once: max_batch_size, or max_active
        self._queue: deque[Job] = deque()
        self._rt: GroupRuntime | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._idle: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._full = False
        self._met = False
        self.closing = False
        self.busy = 0  # members taken out of the queue and not finished
        # Held around every change of the queue and of busy. A group whose worker threads take
        # members themselves (a sync batcher) makes it a real lock; elsewhere it costs nothing.
        self._guard: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()

    @property
    def rt(self) -> GroupRuntime:
        assert self._rt is not None, "the group is bound when the engine's loop starts"
        return self._rt

    @property
    def queued(self) -> int:
        return len(self._queue)

    def bind(self, rt: GroupRuntime) -> None:
        """On the engine's loop, when it starts: the runner begins waiting for members."""
        self._rt = rt
        self._idle = asyncio.Event()
        self._idle.set()
        self._runner = rt.loop.create_task(self._run(), name=f"isolated-api-{self.name}")
        self._runner.add_done_callback(self._runner_ended)

    def _runner_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A bug of ours: say so loudly, as its members would otherwise wait for their timeout.
            logger.critical(
                "the runner of %s crashed; its requests go unanswered", self.name, exc_info=task.exception()
            )

    # -- on the engine's loop ------------------------------------------------------------------

    def add(self, job: Job) -> None:
        """A new member (on the loop). Subclasses may refuse it before it is queued."""
        if not self._met:
            # Until the server is found (a dict lookup): it may start after the first request.
            self._met = self.rt.meet_server(self)
        job.group = self
        job.arrived = self.rt.loop.time()
        with self._guard:
            self._queue.append(job)
        self._changed_now()

    def cancelled(self, job: Job) -> None:
        """``job`` was cancelled (CancelRequest or stop): a queued one leaves at once, unrun."""
        try:
            with self._guard:
                self._queue.remove(job)
        except ValueError:
            self.member_cancelled(job)  # already taken: the subclass drops its result
            return
        self.rt.finish(job, False)
        self._changed_now()

    def member_cancelled(self, job: Job) -> None:  # noqa: B027 (a hook: nothing to do by default)
        """A member already taken out of the queue was cancelled; its context says so."""

    def close(self) -> None:
        """stop(): what is forming goes at once; the runner ends once nothing is left."""
        self.closing = True
        self._changed_now()

    async def drained(self) -> None:
        """Returns once no member is queued or being served."""
        assert self._idle is not None
        await self._idle.wait()

    @property
    def runner(self) -> asyncio.Task[None] | None:
        return self._runner

    def unwinding(self) -> list[asyncio.Future[Any]]:
        """stop(), its timeout spent and every member answered 503: the tasks still to end (the
        runner, and the subclass's own), those that can be cancelled already cancelled."""
        return [] if self._runner is None or self._runner.done() else [self._runner]

    def take(self, count: int) -> list[Job]:
        with self._guard:
            members = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
            self.busy += len(members)
        self._changed_now()
        return members

    def done_with(self, jobs: list[Job], failed: bool | list[bool]) -> None:
        """Members served (or failed): they leave the engine."""
        flags = failed if isinstance(failed, list) else [failed] * len(jobs)
        for job, flag in zip(jobs, flags, strict=True):
            self.rt.finish(job, flag)
        with self._guard:
            self.busy -= len(jobs)
        self._changed_now()

    def _changed_now(self) -> None:
        full = len(self._queue) >= self.max_queued
        if full != self._full:
            self._full = full
            self.rt.hold_intake(self, full)
        if self._idle is not None:
            if self._queue or self.busy:
                self._idle.clear()
            else:
                self._idle.set()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_for_change(self, timeout: float | None = None) -> None:
        """Until a member arrives or leaves, or close(); at most ``timeout`` seconds."""
        # A bare future and a timer: cheaper than an Event under wait_for, which makes a task per
        # wait (the batcher waits again at every arrival while a batch forms).
        loop = self.rt.loop
        self._waiter = waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    @abstractmethod
    async def _run(self) -> None:
        """The group's runner: forms batches (``Batcher``) or turns steps (``Stepper``) until stopped."""


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
