"""Dynamic batching (``engine.batch``): many requests of one type, one call of the user's function.

One runner task per batched type, on the engine's loop. It waits for a first member, takes a batch
slot (``max_concurrent_batches``), then waits for more until the batch is full (``max_batch_size``
members, or the next would pass ``max_cost``) or ``max_wait`` has passed since that first member
reached the engine (so a member that waited for a batch slot goes at once when one frees), or
``stop()``; then it starts the call at once (a sync function in a worker thread, before anything
else runs on the loop) and goes back for the next. ``max_wait=0`` takes what is already queued,
without waiting.

A sync call's thread builds and sends its replies itself; when members are waiting it first tells
the loop that the call ended, so the next call starts while those replies are written: with one
call at a time (one GPU) the model would otherwise idle for as long as they take.

Each member ends on its own: a result that is an exception instance fails that member alone; a
raise or a result list of the wrong length fails every member of that batch, and the next batch is
served as usual. A member cancelled while queued leaves the queue unrun; one cancelled while its
batch runs has its context marked and its result dropped: the batch goes on for the others.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from isolated_api.engine.errors import EngineError
from isolated_api.engine.group import Group, is_async
from isolated_api.engine.handlers import takes_context
from isolated_api.engine.job import Job, send_all
from isolated_api.engine.messages import Result
from isolated_api.shared.messages import ErrorReply

logger = logging.getLogger("isolated_api.engine")


@dataclass(frozen=True)
class BatchOptions:
    """``engine.batch``'s options, checked once."""

    max_batch_size: int = 32
    max_wait: float = 0.0
    max_concurrent_batches: int = 1
    max_queued: int | None = None  # None: 4 x max_batch_size
    cost: Callable[[Any], float] | None = None
    max_cost: float | None = None

    def __post_init__(self) -> None:
        _positive_int("max_batch_size", self.max_batch_size)
        _positive_int("max_concurrent_batches", self.max_concurrent_batches)
        if isinstance(self.max_wait, bool) or not (isinstance(self.max_wait, int | float) and self.max_wait >= 0):
            raise ValueError(f"max_wait must be a number of seconds >= 0, got {self.max_wait!r}")
        if not math.isfinite(self.max_wait):
            raise ValueError(f"max_wait must be finite, got {self.max_wait!r}")
        if self.max_queued is not None:
            _positive_int("max_queued", self.max_queued)
            if self.max_batch_size > self.max_queued:
                raise ValueError(
                    f"max_batch_size ({self.max_batch_size}) > max_queued ({self.max_queued}): a batch could never fill"
                )
        if (self.cost is None) != (self.max_cost is None):
            raise ValueError("cost and max_cost go together: a cost per request and a budget per batch")
        if self.cost is not None and not callable(self.cost):
            raise TypeError(f"cost must be a function of one request, got {self.cost!r}")
        if self.max_cost is not None and not (isinstance(self.max_cost, int | float) and self.max_cost > 0):
            raise ValueError(f"max_cost must be > 0, got {self.max_cost!r}")

    @property
    def queue_bound(self) -> int:
        return self.max_queued if self.max_queued is not None else 4 * self.max_batch_size


def _positive_int(name: str, value: object) -> None:
    # bool is an int subclass: max_batch_size=True is a bug.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(eq=False)
class _Batch:
    """One call of the batch function: its members, its arguments, and whether its slots were freed."""

    members: list[Job]
    args: tuple[Any, ...]
    thread: asyncio.Future[Any] | None = None  # a sync call, running in a worker thread
    freed: bool = False


@dataclass(frozen=True)
class _Raised:
    """The batch function raised ``exc`` (in a worker thread: handed to the code that replies)."""

    exc: Exception


def error_id() -> str:
    return secrets.token_hex(6)


class Batcher(Group):
    """Serves one request type with ``fn(requests)`` or ``fn(requests, contexts)``."""

    def __init__(self, fn: Callable[..., Any], options: BatchOptions) -> None:
        if not callable(fn):
            raise TypeError(f"the batch handler must be callable, got {fn!r}")
        # A function's name, or a callable object's class name (the metrics' label).
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        super().__init__(name, options.queue_bound, options.max_batch_size)
        self.fn = fn
        self.options = options
        self.takes_context = takes_context(fn)
        self.running = 0  # batches running now
        self.max_running = 0  # the most at once so far
        self.calls = 0
        self._async = is_async(fn)
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._calls: set[asyncio.Future[Any]] = set()  # sync calls running in worker threads

    # -- members -------------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        options = self.options
        if options.cost is not None and options.max_cost is not None:
            try:
                job.cost = float(options.cost(job.request))
            except Exception as exc:
                # Its own request fails; the loop, and the other members, go on.
                job.send(self._error(job, exc, "cost function"), final=True)
                self.rt.finish(job, True)
                return
            if not job.cost <= options.max_cost:  # also NaN
                message = f"this request costs {job.cost:g}, more than a batch may ({options.max_cost:g})"
                job.send(ErrorReply(job.id, message, 413), final=True)
                self.rt.finish(job, True)
                return
        super().add(job)

    def _error(self, job: Job, exc: BaseException, what: str) -> ErrorReply:
        if isinstance(exc, EngineError):
            return ErrorReply(job.id, exc.message, exc.status_code)
        eid = error_id()
        logger.error("%s of %s failed on request %r (error id %s)", what, self.name, job.id, eid, exc_info=exc)
        return ErrorReply(job.id, f"internal error (error id {eid})", 500)

    def _count(self) -> tuple[int, bool]:
        """How many queued members the next batch takes, and whether that makes it full."""
        options = self.options
        limit = options.max_batch_size
        if options.max_cost is None:
            return min(limit, self.queued), self.queued >= limit
        total = 0.0
        for count, job in enumerate(self._queue):
            if count == limit or total + job.cost > options.max_cost:
                return count, True
            total += job.cost
        return self.queued, False

    # -- the runner ----------------------------------------------------------------------------

    async def _run(self) -> None:
        self._slots = slots = asyncio.Semaphore(self.options.max_concurrent_batches)
        rt = self.rt
        while True:
            # A slot is taken once there is a member: an idle runner is not woken by every batch
            # that ends (at one client, a loop turn per request for nothing).
            while not self._queue and not self.closing:
                await self.wait_for_change()
            await slots.acquire()
            members = await self._form()
            if not members:
                slots.release()
                return
            try:
                await rt.slots.acquire()  # a batch holds one of the engine's concurrency slots
            except asyncio.CancelledError:  # stop() gave up; its members were answered 503
                self.done_with(members, False)
                slots.release()
                raise
            batch = self._start(members)
            if batch is None:
                rt.slots.release()
                slots.release()
            elif batch.thread is not None:
                # A callback, not a task, ends it: no task to create and step through per batch.
                self._calls.add(batch.thread)
                batch.thread.add_done_callback(functools.partial(self._thread_done, batch))
            else:
                self._track(rt.loop.create_task(self._complete(batch)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _form(self) -> list[Job]:
        max_wait = self.options.max_wait
        loop = self.rt.loop
        while True:
            if not self._queue:
                if self.closing:
                    return []
                await self.wait_for_change()
                continue
            count, full = self._count()
            if full or self.closing:
                return self.take(count)
            # From the first member's arrival, not from now: one that waited for a slot goes at once.
            remaining = self._queue[0].arrived + max_wait - loop.time()
            if remaining <= 0:
                return self.take(count)
            await self.wait_for_change(remaining)

    def _start(self, members: list[Job]) -> _Batch | None:
        """Starts the call for ``members`` (those not cancelled meanwhile) at once: a sync function
        is handed to a worker thread before anything else runs on the loop."""
        rt = self.rt
        live = [job for job in members if not job.closed]  # cancelled while it waited for a slot
        gone = [job for job in members if job.closed]
        if gone:
            self.done_with(gone, False)
        if not live:
            return None
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.calls += 1
        rt.metrics.observe_batch(self.name, len(live), rt.loop.time() - live[0].arrived)
        requests = [job.request for job in live]
        args: tuple[Any, ...] = (requests, [job.context for job in live]) if self.takes_context else (requests,)
        batch = _Batch(live, args)
        if not self._async:
            batch.thread = rt.loop.run_in_executor(rt.pool, self._call_in_thread, batch)
        return batch

    def _free(self, batch: _Batch) -> None:
        """The call of ``batch`` ended: its slots go to the next batch (once, on the loop)."""
        if batch.freed:
            return
        batch.freed = True
        self.running -= 1
        self.rt.slots.release()
        assert self._slots is not None
        self._slots.release()

    def _call_in_thread(self, batch: _Batch) -> Any:
        """In a worker thread: the call, then its replies, sent from here. When members wait for
        the next batch, the loop is told the call ended before the replies are built and written,
        so the next call starts meanwhile rather than after them (one call at a time, the model
        would otherwise idle while they go out). Returns each member's failed flag, or a coroutine
        (an async function behind a wrapper) for the loop to await."""
        try:
            results = self.fn(*batch.args)
        except Exception as exc:
            results = _Raised(exc)
        if inspect.iscoroutine(results):
            return results
        if self._queue:  # read without the loop: at worst the slots are freed a little later, below
            try:
                self.rt.loop.call_soon_threadsafe(self._free, batch)
            except RuntimeError:  # the loop is closed: the engine stopped
                pass
        return self._send(batch, results)

    def _send(self, batch: _Batch, results: Any) -> list[bool]:
        live = batch.members
        if isinstance(results, _Raised):
            outgoing = self._all_failed(live, results.exc)
            failed = [True] * len(live)
        else:
            outgoing, failed = self._replies(live, results)
        send_all(self.rt.sink, [(job, message, True) for job, message in outgoing])
        return failed

    def _thread_done(self, batch: _Batch, future: asyncio.Future[Any]) -> None:
        """On the loop: a sync call's thread returned (its replies sent); its members leave."""
        self._calls.discard(future)
        if future.cancelled():  # stop() gave up waiting; its members were answered 503
            failed = [False] * len(batch.members)
        elif future.exception() is not None:  # a bug of ours in the thread, after the call
            exc = future.exception()
            assert isinstance(exc, BaseException)
            logger.error("batch %s failed after its call", self.name, exc_info=exc)
            failed = self._send(batch, _Raised(RuntimeError("the batch's replies failed")))
        elif inspect.iscoroutine(future.result()):  # an async function behind a wrapper
            self._track(self.rt.loop.create_task(self._complete(batch, future.result())))
            return
        else:
            failed = future.result()
        self._free(batch)
        self.done_with(batch.members, failed)

    async def _complete(self, batch: _Batch, call: Any = None) -> None:
        """On the loop: awaits an async call (``call``, or the batch function called now), frees
        its slots, sends its replies; its members leave the engine."""
        try:
            failed = await self._await_then_send(batch, call)
        except asyncio.CancelledError:
            # stop() gave up on an async batch; its members were already answered 503.
            self._free(batch)
            self.done_with(batch.members, False)
            raise
        self._free(batch)
        self.done_with(batch.members, failed)

    async def _await_then_send(self, batch: _Batch, call: Any) -> list[bool]:
        """Awaits ``call`` (None: calls the async batch function now), frees the slots, replies."""
        try:
            results = await (self.fn(*batch.args) if call is None else call)
        except Exception as exc:
            results = _Raised(exc)
        self._free(batch)  # the next batch may start while these replies go out
        return self._send(batch, results)

    def _replies(self, live: list[Job], results: Any) -> tuple[list[tuple[Job, Any]], list[bool]]:
        if isinstance(results, str | bytes) or not isinstance(results, Sequence) or len(results) != len(live):
            got = f"{len(results)} results" if isinstance(results, Sequence) else type(results).__name__
            eid = error_id()
            logger.error("batch handler %s returned %s for %d requests (error id %s)", self.name, got, len(live), eid)
            reply = f"internal error (error id {eid})"
            return [(job, ErrorReply(job.id, reply, 500)) for job in live], [True] * len(live)
        outgoing: list[tuple[Job, Any]] = []
        failed: list[bool] = []
        for job, item in zip(live, results, strict=True):
            if isinstance(item, Exception):
                outgoing.append((job, self._error(job, item, "batch handler")))
                failed.append(True)
            else:
                outgoing.append((job, Result(job.id, item)))
                failed.append(False)
        return outgoing, failed

    def _all_failed(self, live: list[Job], exc: Exception) -> list[tuple[Job, Any]]:
        if isinstance(exc, EngineError):
            return [(job, ErrorReply(job.id, exc.message, exc.status_code)) for job in live]
        # One error id and one traceback for the whole batch, not one per member.
        eid = error_id()
        ids = [job.id for job in live]
        logger.error(
            "batch handler %s failed on %d requests %r (error id %s)", self.name, len(live), ids, eid, exc_info=exc
        )
        message = f"internal error (error id {eid})"
        return [(job, ErrorReply(job.id, message, 500)) for job in live]

    # -- stop ----------------------------------------------------------------------------------

    def unwinding(self) -> list[asyncio.Future[Any]]:
        tasks: list[asyncio.Future[Any]] = list(self._tasks)
        if self._async:
            for task in tasks:  # every member was answered 503: nobody awaits this call any more
                task.cancel()
        return [*super().unwinding(), *tasks, *self._calls]
