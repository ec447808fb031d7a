"""Continuous batching of streams (``engine.steps``): the model advances every active stream by
one step per call, and requests join and leave between steps.

One runner task per stepped type, on the engine's loop, holding one of the engine's concurrency
slots while it has streams. Each turn:

1. members that ended outside a step (cancelled, stopped, failed to send) leave: ``leave(request,
   why)``; members cancelled before they joined are dropped without reaching the stepper;
2. newcomers join, up to ``max_active``: ``join(requests)`` (prefill);
3. ``step(active)`` returns one item per active request: a chunk, ``Done(value)`` (the stream's
   last chunk), or an exception instance (that stream fails alone). The step's chunks leave as ONE
   message on ``response_q``; streams that ended leave (``"done"`` / ``"error"``).

With every method sync, a turn's ``leave`` (for the streams that ended), ``join`` and ``step`` are
ONE call in a worker thread: a newcomer's first step then follows its join without two more hops
through the loop; the streams a step ends leave at the start of the next turn.

A raising ``join`` or ``step`` fails the streams it was called with (an ``EngineError`` with its
status, anything else a 500 with one error id, logged once) and the loop goes on with the others
and with newcomers. ``leave`` is called exactly once for every request that was passed to ``join``;
its own exceptions are logged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from isolated_api.engine.batching import error_id
from isolated_api.engine.errors import EngineError
from isolated_api.engine.group import STOPPED_REASON, Group, call, is_async
from isolated_api.engine.job import Job, send_all
from isolated_api.engine.messages import StreamChunk
from isolated_api.shared.messages import ErrorReply

logger = logging.getLogger("isolated_api.engine")


@dataclass(frozen=True, slots=True)
class Done:
    """Returned by a stepper's ``step()`` for a stream that ends: ``value``, unless None, is its
    last chunk's data (sent with ``is_final=True``; None sends a final chunk with no data)."""

    value: Any = None


class Stepper(Group):
    """Serves one request type with the methods of ``stepper``: ``step`` (required), ``join`` and
    ``leave`` (optional), each sync (run in a worker thread) or ``async def``."""

    def __init__(self, stepper: Any, max_active: int, max_queued: int | None) -> None:
        if isinstance(max_active, bool) or not isinstance(max_active, int) or max_active < 1:
            raise ValueError(f"max_active must be an integer >= 1, got {max_active!r}")
        queued = 4 * max_active if max_queued is None else max_queued
        if isinstance(queued, bool) or not isinstance(queued, int) or queued < 1:
            raise ValueError(f"max_queued must be an integer >= 1, got {max_queued!r}")
        step = getattr(stepper, "step", None)
        if not callable(step):
            raise TypeError(f"a stepper needs a step(active) method, got {stepper!r}")
        super().__init__(getattr(type(stepper), "__qualname__", repr(stepper)), queued, max_active)
        self._join = getattr(stepper, "join", None)
        self._leave = getattr(stepper, "leave", None)
        self._step_fn = step
        # Every method sync: a turn's leave(), join() and step() run in ONE worker-thread call, so
        # a newcomer's first step follows its join without two more hops through the loop.
        self._in_one_call = not any(is_async(f) for f in (self._join, step, self._leave) if f is not None)
        self.max_active = max_active
        self.active: list[Job] = []
        self.steps = 0
        self.max_seen = 0  # the most streams one step() got

    def member_cancelled(self, job: Job) -> None:
        # Active: it leaves before the next step (its chunk of a running step is dropped, as the
        # job refuses messages once cancelled).
        self._changed_now()

    async def _run(self) -> None:
        rt = self.rt
        while True:
            while not self.queued and not self.active:
                if self.closing:
                    return
                await self.wait_for_change()
            async with rt.slots:  # the stepper holds one of the engine's concurrency slots while it works
                while self.queued or self.active:
                    await self._turn()

    async def _turn(self) -> None:
        if self._in_one_call:
            await self._sync_turn()
            await asyncio.sleep(0)  # as below: newcomers and cancels are handed over between steps
            return
        await self._leave_ended()
        room = self.max_active - len(self.active)
        if room > 0 and self.queued:
            newcomers = self.take(room)
            gone = [job for job in newcomers if job.closed]  # cancelled before they joined
            if gone:
                self.done_with(gone, False)
            joining = [job for job in newcomers if not job.closed]
            if joining:
                await self._join_all(joining)
        if any(not job.closed for job in self.active):
            await self._step()
        await self._leave_ended()
        # Lets the loop hand over newcomers and cancels between steps, even when an async step()
        # never suspends.
        await asyncio.sleep(0)

    async def _sync_turn(self) -> None:
        """One turn of a sync stepper: the streams that ended leave, newcomers join, every active
        stream steps, all in one call of ``_turn_in_thread`` in a worker thread."""
        rt = self.rt
        ended = [job for job in self.active if job.closed]
        if ended:
            self.active = [job for job in self.active if not job.closed]
        why = [_why(job) for job in ended]
        joining: list[Job] = []
        room = self.max_active - len(self.active)
        if room > 0 and self.queued:
            newcomers = self.take(room)
            gone = [job for job in newcomers if job.closed]  # cancelled before they joined
            if gone:
                self.done_with(gone, False)
            joining = [job for job in newcomers if not job.closed]
            self.active.extend(joining)  # joined from here on: leave() is owed to each
        staying = [job for job in self.active if not job.closed and job not in joining]
        if not (ended or joining or staying):
            return
        turn = _Turn([job.request for job in ended], why, [job.request for job in joining], len(staying))
        turn.active = [job.request for job in staying] + turn.joining
        await rt.loop.run_in_executor(rt.pool, self._turn_in_thread, turn)
        if ended:
            self.done_with(ended, [w == "error" for w in why])
        if turn.join_error is not None:
            self._fail(joining, turn.join_error, "join")
        stepped = staying if turn.join_error is not None else staying + joining
        if turn.stepped:
            self.steps += 1
            self.max_seen = max(self.max_seen, len(stepped))
            rt.metrics.observe_step(self.name, len(stepped), turn.seconds)
            if turn.step_error is not None:
                self._fail(stepped, turn.step_error, "step")
            else:
                self._deliver(stepped, turn.outputs)
        # Streams that ended in this step leave at the start of the next turn (before its step),
        # or in a turn of their own when nothing else is left.

    def _turn_in_thread(self, turn: _Turn) -> None:
        """In a worker thread: ``leave`` for each stream that ended, ``join`` the newcomers,
        ``step`` every active stream (without the newcomers if their join raised)."""
        if self._leave is not None and turn.leaving:
            _leave_each(self._leave, turn.leaving, turn.why, self.name)
        active = turn.active
        if turn.joining and self._join is not None:
            try:
                self._join(turn.joining)
            except Exception as exc:
                turn.join_error = exc
                active = active[: turn.staying]
        if not active:
            return
        turn.stepped = True
        started = time.perf_counter()
        try:
            turn.outputs = self._step_fn(active)
        except Exception as exc:
            turn.step_error = exc
        turn.seconds = time.perf_counter() - started

    async def _join_all(self, joining: list[Job]) -> None:
        join = self._join
        self.active.extend(joining)  # joined from here on: leave() is owed to each
        if join is None:
            return
        try:
            await call(self.rt, join, [job.request for job in joining])
        except Exception as exc:
            self._fail(joining, exc, "join")

    async def _step(self) -> None:
        rt = self.rt
        active = [job for job in self.active if not job.closed]
        self.steps += 1
        self.max_seen = max(self.max_seen, len(active))
        started = time.perf_counter()
        try:
            outputs = await call(rt, self._step_fn, [job.request for job in active])
        except Exception as exc:
            rt.metrics.observe_step(self.name, len(active), time.perf_counter() - started)
            self._fail(active, exc, "step")
            return
        rt.metrics.observe_step(self.name, len(active), time.perf_counter() - started)
        self._deliver(active, outputs)

    def _deliver(self, active: list[Job], outputs: Any) -> None:
        """A step's outputs to its streams, as ONE message; the streams that end are marked."""
        rt = self.rt
        if not isinstance(outputs, list | tuple) or len(outputs) != len(active):
            got = f"{len(outputs)} items" if isinstance(outputs, list | tuple) else type(outputs).__name__
            eid = error_id()
            logger.error("step() of %s returned %s for %d streams (error id %s)", self.name, got, len(active), eid)
            self._send_ends([(job, ErrorReply(job.id, f"internal error (error id {eid})", 500)) for job in active])
            return
        outgoing: list[tuple[Job, Any, bool]] = []
        for job, item in zip(active, outputs, strict=True):
            if isinstance(item, Done):
                outgoing.append((job, StreamChunk(job.id, item.value, True), True))
            elif isinstance(item, Exception):
                outgoing.append((job, self._error_reply(job, item), True))
            else:
                outgoing.append((job, StreamChunk(job.id, item, False), False))
        # One message for the whole step: its chunks, and the final chunks or errors of the streams
        # that end (a job cancelled meanwhile is skipped: its result is dropped).
        sent = {id(job) for job in send_all(rt.sink, outgoing)}
        for job, message, final in outgoing:
            if final and id(job) in sent:
                job.outcome = "error" if type(message) is ErrorReply else "done"

    def _error_reply(self, job: Job, exc: Exception) -> ErrorReply:
        if isinstance(exc, EngineError):
            return ErrorReply(job.id, exc.message, exc.status_code)
        eid = error_id()
        logger.error("step() of %s failed stream %r (error id %s)", self.name, job.id, eid, exc_info=exc)
        return ErrorReply(job.id, f"internal error (error id {eid})", 500)

    def _fail(self, jobs: list[Job], exc: Exception, what: str) -> None:
        if isinstance(exc, EngineError):
            self._send_ends([(job, ErrorReply(job.id, exc.message, exc.status_code)) for job in jobs])
            return
        eid = error_id()
        ids = [job.id for job in jobs]
        logger.error(
            "%s() of %s failed for %d streams %r (error id %s)", what, self.name, len(jobs), ids, eid, exc_info=exc
        )
        self._send_ends([(job, ErrorReply(job.id, f"internal error (error id {eid})", 500)) for job in jobs])

    def _send_ends(self, ends: list[tuple[Job, Any]]) -> None:
        for job in send_all(self.rt.sink, [(job, reply, True) for job, reply in ends]):
            job.outcome = "error"

    async def _leave_ended(self) -> None:
        """Every active member whose job ended leaves, with why it ended."""
        ended = [job for job in self.active if job.closed]
        if not ended:
            return
        self.active = [job for job in self.active if not job.closed]
        why = [_why(job) for job in ended]
        leave = self._leave
        if leave is not None:
            requests = [job.request for job in ended]
            if is_async(leave):
                for request, reason in zip(requests, why, strict=True):
                    try:
                        await leave(request, reason)
                    except Exception:
                        logger.exception("leave() of %s failed for %r", self.name, getattr(request, "id", None))
            else:
                await self.rt.loop.run_in_executor(self.rt.pool, _leave_each, leave, requests, why, self.name)
        self.done_with(ended, [w == "error" for w in why])


@dataclass(eq=False)
class _Turn:
    """What one sync turn hands its worker thread, and what the thread hands back."""

    leaving: list[Any]
    why: list[str]
    joining: list[Any]
    staying: int  # active[:staying] were active before this turn; the newcomers follow
    active: list[Any] = field(default_factory=list)
    join_error: Exception | None = None
    stepped: bool = False
    outputs: Any = None
    step_error: Exception | None = None
    seconds: float = 0.0


def _why(job: Job) -> str:
    if job.outcome is not None:
        return job.outcome
    if job.context.cancelled:
        return "stopped" if job.context.cancel_reason == STOPPED_REASON else "cancelled"
    return "error"  # ended with nothing sent by the stepper: its reply could not be sent


def _leave_each(leave: Any, requests: list[Any], why: list[str], name: str) -> None:
    """A sync ``leave`` for each request, in one worker-thread call; one raising skips no other."""
    for request, reason in zip(requests, why, strict=True):
        try:
            leave(request, reason)
        except Exception:
            logger.exception("leave() of %s failed for %r", name, getattr(request, "id", None))
