"""Dynamic batching (``engine.batch``): many requests of one type, one call of the user's function.

One runner task per batched type, on the engine's loop. A batch goes when it is full
(``max_batch_size`` members, or the next would pass ``max_cost``), or ``max_wait`` after its first
member reached the engine (so a member that waited for a batch slot goes at once when one frees),
or at ``stop()``. ``max_wait=0`` takes what is already queued, without waiting.

A sync function runs in chains: once a member is queued and no batch is forming, the runner takes a
batch slot (``max_concurrent_batches``) and an engine slot and hands a chain to a worker thread.
That thread forms the batch itself, waiting out ``max_wait`` on a condition (to the microsecond:
the loop's timers are epoll's, whose timeout is rounded up to the millisecond, and a thread hop
would follow), calls the function, and, while members are queued and no other chain is forming,
forms and calls the next batch at once, with the same slots: with one call at a time (one GPU) the
model would otherwise idle for a hop to the loop and back to a thread between two calls. The
queue is shared with those threads under a lock. A call's replies are sent by the loop when the
chain goes on (the thread is calling the model meanwhile), by the thread when the chain ends.
An ``async def`` function's batches form and run on the loop.

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
import threading
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
    freed: bool = False
    waited: float = 0.0  # its first member's wait, from arrival to the batch's forming
    counted: bool = False  # the loop has counted it (calls, metrics, the intake's gate)


@dataclass(eq=False)
class _Chain:
    """Calls of a sync batch function one after another in one worker thread, holding one batch
    slot and one engine slot from its first batch's forming to its last call's end."""

    batch: _Batch | None = None  # the call under way, or the last one, whose members leave at its end
    abandoned: bool = False  # stop() gave up on it: it takes no more members
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
        self._calls: set[asyncio.Future[Any]] = set()  # chains of sync calls in worker threads
        # The queue is shared with the chains' threads (they take members themselves): its lock,
        # and its condition, notified when a member arrives or stop() closes the forming batch.
        self._cond = threading.Condition(threading.Lock())
        self._guard = self._cond
        self._forming = False  # a chain is forming the next batch (under the lock)

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
        self._wake_forming()  # the batch may be full now

    def cancelled(self, job: Job) -> None:
        super().cancelled(job)
        # If every queued member left, the forming chain must end now and free its slots, not
        # hold them to the end of max_wait.
        self._wake_forming()

    def _wake_forming(self) -> None:
        """The queue changed: a chain waiting in its thread for its batch to form looks again."""
        if self._forming:
            with self._cond:
                self._cond.notify()

    def close(self) -> None:
        super().close()
        self._close_waking()  # a batch forming in a chain's thread goes at once

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
        if not self._async:
            await self._run_chains(slots)
            return
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
            else:
                self._track(rt.loop.create_task(self._complete(batch)))

    async def _run_chains(self, slots: asyncio.Semaphore) -> None:
        """A sync function: once a member is queued and no batch is forming, a chain starts in a
        worker thread with a batch slot and an engine slot; it forms its batches and calls the
        function itself (below), and the loop hears of it only when members are taken or leave."""
        rt = self.rt
        while True:
            while not self._queue and not self.closing:
                await self.wait_for_change()
            if not self._queue:  # stop(), and nothing left to serve
                return
            await slots.acquire()
            with self._cond:
                starts = bool(self._queue) and not self._forming
                self._forming = self._forming or starts
            if not starts:  # a chain is forming this batch already (max_concurrent_batches > 1)
                slots.release()
                await self.wait_for_change()
                continue
            try:
                await rt.slots.acquire()  # a chain holds one of the engine's concurrency slots
            except asyncio.CancelledError:  # stop() gave up
                with self._cond:
                    self._forming = False
                slots.release()
                raise
            chain = _Chain()
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            future = rt.loop.run_in_executor(rt.pool, self._chain_in_thread, chain)
            # A callback, not a task, ends it: no task to create and step through per chain.
            self._calls.add(future)
            future.add_done_callback(functools.partial(self._chain_done, chain))

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
        """Starts the async call for ``members`` (those not cancelled meanwhile)."""
        live = [job for job in members if not job.closed]  # cancelled while it waited for a slot
        gone = [job for job in members if job.closed]
        if gone:
            self.done_with(gone, False)
        if not live:
            return None
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.calls += 1
        self.rt.metrics.observe_batch(self.name, len(live), self.rt.loop.time() - live[0].arrived)
        return self._batch_of(live)

    def _batch_of(self, live: list[Job]) -> _Batch:
        requests = [job.request for job in live]
        args: tuple[Any, ...] = (requests, [job.context for job in live]) if self.takes_context else (requests,)
        return _Batch(live, args)

    def _free(self, batch: _Batch) -> None:
        """The async call of ``batch`` ended: its slots go to the next batch (once, on the loop)."""
        if batch.freed:
            return
        batch.freed = True
        self._release()

    def _release(self) -> None:
        self.running -= 1
        self.rt.slots.release()
        assert self._slots is not None
        self._slots.release()

    # -- a chain: sync calls in one worker thread ----------------------------------------------

    def _chain_in_thread(self, chain: _Chain) -> Any:
        """In a worker thread, holding a batch slot and an engine slot: forms a batch (waiting out
        its ``max_wait`` here, to the microsecond, not on the loop's millisecond timers), calls
        the function, and while members are queued and no other chain forms, forms and calls the
        next at once, handing the last call's replies to the loop: the model is not kept waiting
        for a hop through the loop and back to a thread. The last call's replies are sent from
        here. Returns the last batch's failed flags, None when its members went to the loop (or
        none came), or a coroutine (an async function behind a wrapper) for the loop to await."""
        batch = self._form_in_thread(chain)
        while batch is not None:
            chain.batch = batch
            try:
                results = self.fn(*batch.args)
            except Exception as exc:
                results = _Raised(exc)
            if inspect.iscoroutine(results):
                return results
            with self._cond:
                more = bool(self._queue) and not self._forming and not chain.abandoned
                self._forming = self._forming or more
            if not more:
                if self._queue:  # another chain forms them: its slot frees now, before the replies
                    self._post(self._free_chain, chain)
                return self._send(batch, results)
            chain.batch = None
            self._post(self._send_and_leave, batch, results)
            batch = self._form_in_thread(chain)
        return None

    def _form_in_thread(self, chain: _Chain) -> _Batch | None:
        """The forming chain's turn (``_forming`` is set for it): waits until the batch is full,
        or ``max_wait`` after its first member arrived, or stop(); takes its members. None when
        the queue emptied meanwhile (all cancelled)."""
        max_wait = self.options.max_wait
        clock = self.rt.loop.time  # time.monotonic on asyncio's loops; members arrived by it
        with self._cond:
            try:
                while True:
                    if not self._queue or chain.abandoned:
                        return None
                    count, full = self._count()
                    if full or self.closing:
                        break
                    remaining = self._queue[0].arrived + max_wait - clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                # busy first: the loop, reading both without the lock, never sees them both empty.
                self.busy += count
                members = [self._queue.popleft() for _ in range(count)]
                # The loop must hear of it now only if it has to act: reopen the intake's gate
                # (max_queued was reached), or start another chain for members still queued.
                # Otherwise the batch is counted with its replies, and a batch of one costs one
                # wake-up of the loop instead of two.
                tell_now = self._full or (bool(self._queue) and self.options.max_concurrent_batches > 1)
            finally:
                self._forming = False
        batch = self._batch_of(members)
        batch.waited = clock() - members[0].arrived
        if tell_now:
            self._post(self._taken, batch)
        return batch

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self.rt.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: the engine stopped
            pass

    def _taken(self, batch: _Batch) -> None:
        """On the loop (once per batch): a chain took ``batch``'s members to call the function."""
        if batch.counted:
            return
        batch.counted = True
        self.calls += 1
        self.rt.metrics.observe_batch(self.name, len(batch.members), batch.waited)
        self._changed_now()  # the gate (max_queued), and a runner waiting to start a chain

    def _send_and_leave(self, batch: _Batch, results: Any) -> None:
        """On the loop: the replies of a call whose chain went on to the next call."""
        self._taken(batch)
        try:
            failed = self._send(batch, results)
        except Exception as exc:  # a bug of ours: its members must not wait for their timeout
            logger.error("batch %s failed after its call", self.name, exc_info=exc)
            failed = self._send(batch, _Raised(RuntimeError("the batch's replies failed")))
        self.done_with(batch.members, failed)

    def _free_chain(self, chain: _Chain) -> None:
        """On the loop: the chain's slots go to the next chain (once)."""
        if not chain.freed:
            chain.freed = True
            self._release()

    def _close_waking(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _send(self, batch: _Batch, results: Any) -> list[bool]:
        live = batch.members
        if isinstance(results, _Raised):
            outgoing = self._all_failed(live, results.exc)
            failed = [True] * len(live)
        else:
            outgoing, failed = self._replies(live, results)
        send_all(self.rt.sink, [(job, message, True) for job, message in outgoing])
        return failed

    def _chain_done(self, chain: _Chain, future: asyncio.Future[Any]) -> None:
        """On the loop: a chain's thread returned (its last replies sent); those members leave."""
        self._calls.discard(future)
        batch = chain.batch
        if batch is not None:
            self._taken(batch)
        if future.cancelled():  # stop() gave up waiting; its members were answered 503
            chain.abandoned = True  # it forms no more batches, should its call ever return
            failed = [False] * (len(batch.members) if batch is not None else 0)
        elif future.exception() is not None:  # a bug of ours in the thread
            exc = future.exception()
            assert isinstance(exc, BaseException)
            logger.error("batch %s failed after its call", self.name, exc_info=exc)
            failed = self._send(batch, _Raised(RuntimeError("the batch's replies failed"))) if batch else []
        elif inspect.iscoroutine(future.result()):  # an async function behind a wrapper
            assert batch is not None
            self._track(self.rt.loop.create_task(self._complete_chain(chain, batch, future.result())))
            return
        else:
            failed = future.result() or []
        self._free_chain(chain)
        if batch is not None:
            self.done_with(batch.members, failed)

    async def _complete_chain(self, chain: _Chain, batch: _Batch, call: Any) -> None:
        try:
            failed = await self._await_then_send(batch, call, lambda: self._free_chain(chain))
        except asyncio.CancelledError:
            self._free_chain(chain)
            self.done_with(batch.members, False)
            raise
        self._free_chain(chain)
        self.done_with(batch.members, failed)

    async def _complete(self, batch: _Batch) -> None:
        """On the loop: awaits an async call, frees its slots, sends its replies; its members
        leave the engine."""
        try:
            failed = await self._await_then_send(batch, None, lambda: self._free(batch))
        except asyncio.CancelledError:
            # stop() gave up on an async batch; its members were already answered 503.
            self._free(batch)
            self.done_with(batch.members, False)
            raise
        self._free(batch)
        self.done_with(batch.members, failed)

    async def _await_then_send(self, batch: _Batch, call: Any, free: Callable[[], None]) -> list[bool]:
        """Awaits ``call`` (None: calls the async batch function now), frees the slots, replies."""
        try:
            results = await (self.fn(*batch.args) if call is None else call)
        except Exception as exc:
            results = _Raised(exc)
        free()  # the next batch may start while these replies go out
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
