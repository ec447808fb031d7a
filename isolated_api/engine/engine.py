"""Engine: serves ``request_q`` for you in the main process.

Threads: one *intake* thread blocks on ``request_q.get()`` (see ``intake.py``); one *loop* thread
runs an asyncio loop that dispatches each batch of messages, awaits async handlers and async
generators, and hands sync handlers to a pool of ``concurrency`` worker threads. A semaphore on
the loop bounds the handlers running at once; the intake holds at most ``concurrency +
max_waiting + 1`` requests, so a saturated engine stops taking from ``request_q`` (backpressure).
The one extra keeps the reader listening while every slot is busy, so a ``CancelRequest`` reaches
a busy engine; a cancellation queued *behind* further requests is read only when a slot frees
(requests and cancellations share one queue; a separate cancel queue would lift that).

Batched types (``batch``, ``steps``; ``batching.py``, ``stepping.py``) each have a runner task on the
loop; their members skip the intake's limit and count against their own ``max_queued`` (``group.py``).

Every request ends exactly once (``Job``): its reply / final chunk / ``ErrorReply``, or nothing
when a ``CancelRequest`` cancelled it, or a 503 when ``stop()`` ran out of time for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, overload

from isolated_api.engine.batching import Batcher, BatchOptions
from isolated_api.engine.execution import run_job
from isolated_api.engine.group import STOPPED_REASON, Group, GroupRuntime
from isolated_api.engine.handlers import Handler, HandlerTable, check_request_type
from isolated_api.engine.intake import Intake, StopIntake
from isolated_api.engine.job import Encode, Job, ReplySink
from isolated_api.engine.messages import HealthPing, HealthStatus
from isolated_api.engine.metrics import EngineMetrics
from isolated_api.engine.server_meeting import meet_server
from isolated_api.engine.stepping import Stepper
from isolated_api.shared.heartbeat import Heartbeat
from isolated_api.shared.messages import CancelRequest, ErrorReply

logger = logging.getLogger("isolated_api.engine")

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S")
_MISSING = object()
_UNWIND_GRACE = 1.0  # seconds for cancelled handlers to unwind once stop()'s timeout is spent


class Engine:
    """Reads requests from ``request_q``, runs the handler registered for each request's type and
    puts what it returns (``Result``), yields (``StreamChunk``) or raises (``ErrorReply``) on
    ``response_q``, addressed to the request's ``.id``::

        engine = Engine(request_q, response_q, concurrency=4)

        @engine.handle(Generate)
        async def generate(request: Generate) -> AsyncIterator[str]:
            async for token in model.stream(request.prompt):
                yield token

        engine.start()      # background threads; or engine.run() to block until Ctrl-C / stop()
        server.start_subprocess()   # built with .subprocess.with_ipc(request_q, response_q)
        server.wait()               # until the server stops
        engine.stop(timeout=5)

    Many requests per call: ``@engine.batch(Type, max_batch_size=32, max_wait=0.002)`` (one call
    of ``fn(requests)`` for up to 32 requests) and ``engine.steps(Type, stepper, max_active=32)``
    (continuous batching of streams); see docs/batching.md.

    Handlers: plain functions (run in a worker thread), ``async def`` functions, generators and
    async generators (streams). Declared as ``fn(request, ctx)`` they also get a
    ``RequestContext``. Raise ``EngineError(message, status)`` to choose the client's status and
    message; any other exception is a 500 with a generic message and an error id, logged here with
    its traceback. ``handle(object, fn)`` is a catch-all.
    ``heartbeat``: seconds between ``Heartbeat`` messages the engine's loop puts on ``response_q``
    (None: none), for a server whose readiness expects a beat (``beat_timeout``: choose it a few
    times this interval).
    ``codec``: the server's codec when it is binary (``MsgspecCodec``; list ``ENGINE_WIRE_TYPES``
    from ``isolated_api`` in it): requests are decoded and replies encoded here.
    """

    def __init__(
        self,
        request_q: Any,
        response_q: Any,
        *,
        concurrency: int = 8,
        max_waiting: int = 0,
        codec: Any = None,
        heartbeat: float | None = None,
    ) -> None:
        if heartbeat is not None and not heartbeat > 0:
            raise ValueError(f"heartbeat must be > 0 seconds or None, got {heartbeat}")
        self._heartbeat = heartbeat
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")
        self._request_q = request_q
        self._response_q = response_q
        self.concurrency = concurrency
        self._encode, self._decode = _codec_functions(codec)
        self._sink = ReplySink(response_q, self._encode)
        self._handlers = HandlerTable()
        # One request more than the engine can start or queue: with every slot busy the reader
        # stays in get() (one request parked), so a CancelRequest still reaches a busy engine.
        self._intake = Intake(request_q, concurrency + max_waiting + 1, self._deliver, self._intake_exited)
        self._jobs: dict[Hashable, Job] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._finished = threading.Event()
        self._stop_timeout: float | None = None
        self._stopping = False
        self._runtime: GroupRuntime | None = None
        self.metrics = EngineMetrics()
        self.served = 0
        self.failed = 0
        self.cancelled = 0
        self.refused = 0

    # -- registration ------------------------------------------------------------------------

    @overload
    def handle(self, request_type: type) -> Callable[[F], F]: ...

    @overload
    def handle(self, request_type: type, fn: F) -> F: ...

    def handle(self, request_type: type, fn: F | None = None) -> F | Callable[[F], F]:
        """Registers ``fn`` for requests of ``request_type`` (and its subclasses); usable as a
        decorator. ``object`` catches every request type that has no handler of its own."""
        if fn is None:

            def decorator(f: F) -> F:
                self._handlers.register(request_type, f)
                return f

            return decorator
        self._handlers.register(request_type, fn)
        return fn

    @overload
    def batch(
        self,
        request_type: type,
        *,
        max_batch_size: int = 32,
        max_wait: float = 0.0,
        max_concurrent_batches: int = 1,
        max_queued: int | None = None,
        cost: Callable[[Any], float] | None = None,
        max_cost: float | None = None,
    ) -> Callable[[F], F]: ...

    @overload
    def batch(
        self,
        request_type: type,
        fn: F,
        *,
        max_batch_size: int = 32,
        max_wait: float = 0.0,
        max_concurrent_batches: int = 1,
        max_queued: int | None = None,
        cost: Callable[[Any], float] | None = None,
        max_cost: float | None = None,
    ) -> F: ...

    def batch(
        self,
        request_type: type,
        fn: F | None = None,
        *,
        max_batch_size: int = 32,
        max_wait: float = 0.0,
        max_concurrent_batches: int = 1,
        max_queued: int | None = None,
        cost: Callable[[Any], float] | None = None,
        max_cost: float | None = None,
    ) -> F | Callable[[F], F]:
        """Registers ``fn`` to serve requests of ``request_type`` several at a time (dynamic
        batching); usable as a decorator, like ``handle``::

            @engine.batch(Embed, max_batch_size=32, max_wait=0.002)
            def embed(requests: list[Embed]) -> list[Any]:
                return model.embed([r.text for r in requests])

        ``fn(requests)`` or ``fn(requests, contexts)``, plain (run in a worker thread) or ``async
        def``, gets up to ``max_batch_size`` requests in arrival order, from every HTTP worker, and
        returns one item per request, in order: each is sent as that request's ``Result``, except
        an exception instance (``EngineError(message, status)``), which fails that request alone.
        A raise fails every member (an ``EngineError`` with its status, anything else a 500 with
        one error id, logged once); so does a result list of the wrong length.

        ``max_wait``: seconds a batch may wait for more members, counted from its first member
        reaching the engine (0: take what is already queued, never wait). ``max_concurrent_batches``:
        calls of ``fn`` at once (each holds one of the engine's ``concurrency`` slots).
        ``max_queued``: members waiting for a batch (default 4 x ``max_batch_size``); past it the
        engine stops reading ``request_q``. ``cost(request)`` and ``max_cost``: a budget per batch
        (tokens, pixels); a request costing more than ``max_cost`` alone is answered 413, and a
        ``cost`` that raises fails its own request. See docs/batching.md."""
        options = BatchOptions(max_batch_size, max_wait, max_concurrent_batches, max_queued, cost, max_cost)
        check_request_type(request_type, "batch()")

        def register(f: F) -> F:
            self._register_group(request_type, Batcher(f, options))
            return f

        return register if fn is None else register(fn)

    def steps(self, request_type: type, stepper: S, *, max_active: int = 32, max_queued: int | None = None) -> S:
        """Serves requests of ``request_type`` as streams advanced together (continuous batching)::

            class Generator:
                def join(self, requests: list[Generate]) -> None: ...      # newcomers: prefill
                def step(self, active: list[Generate]) -> list[Any]: ...   # one item per stream
                def leave(self, request: Generate, why: str) -> None: ...  # free its KV cache

            engine.steps(Generate, Generator(), max_active=32)

        Each method is sync (run in a worker thread) or ``async def``; ``join`` and ``leave`` are
        optional. ``step(active)`` returns one item per active request, in the order of
        ``active``: a value is that stream's next chunk, ``Done(value)`` ends the stream (``value``,
        unless None, its last chunk), an exception instance (``EngineError``) ends that stream
        alone with that error. Requests join between steps, at most ``max_active`` at once;
        ``leave(request, why)`` is called once for every request that joined, ``why`` being
        ``"done"``, ``"error"``, ``"cancelled"`` (client gone, ``CancelRequest``) or ``"stopped"``
        (``stop()``). A request cancelled before it joined never reaches the stepper. Each step's
        chunks leave as one message. ``max_queued``: requests waiting to join (default 4 x
        ``max_active``); past it the engine stops reading ``request_q``. Returns ``stepper``.
        See docs/batching.md."""
        check_request_type(request_type, "steps()")
        self._register_group(request_type, Stepper(stepper, max_active, max_queued))
        return stepper

    def _register_group(self, request_type: type, group: Group) -> None:
        self._handlers.register_group(request_type, group)
        loop, runtime = self._loop, self._runtime
        if loop is not None and runtime is not None:
            # Registered on a running engine: its runner starts on the loop (or at its first member).
            try:
                loop.call_soon_threadsafe(self._bind, group)
            except RuntimeError:  # the loop is closed: the engine stopped
                pass

    def _bind(self, group: Group) -> None:
        if group.runner is None and self._runtime is not None:
            group.bind(self._runtime)

    # -- facts -------------------------------------------------------------------------------

    @property
    def running_count(self) -> int:
        """Requests inside the engine: running, or waiting for a handler slot."""
        return len(self._jobs)

    @property
    def is_running(self) -> bool:
        return self._ready.is_set() and not self._finished.is_set()

    @property
    def reading_paused(self) -> bool:
        """True while a batcher's or stepper's queue is full (``max_queued``): the engine reads
        nothing more from ``request_q`` until a batch takes members out, so the HTTP side's
        ``max_pending`` fills and new requests get 503, as for a busy engine."""
        return self._intake.held_back

    @property
    def is_stopping(self) -> bool:
        """True once ``stop()`` was called: new requests are refused, batches forming go at once."""
        return self._stopping

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Engine:
        """Starts the engine's threads and returns at once."""
        with self._lock:
            if self._loop_thread is not None:
                raise RuntimeError("this Engine was already started; create a new one to start again")
            self._loop_thread = threading.Thread(target=self._run_loop, name="isolated-api-engine", daemon=True)
            self._loop_thread.start()
        self._ready.wait()
        self._intake.start()
        return self

    def run(self) -> None:
        """Starts the engine and blocks until ``stop()`` (from another thread) or Ctrl-C."""
        self.start()
        try:
            self._finished.wait()
        except KeyboardInterrupt:
            logger.info("interrupted; stopping the engine")
        finally:
            self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: stops taking requests (those read meanwhile get 503), lets in-flight ones
        finish for up to ``timeout`` seconds, then cancels the rest (their clients get 503).
        Calling it twice, or before ``start()``, is harmless."""
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        with self._lock:
            loop, thread = self._loop, self._loop_thread
            first = not self._stopping and loop is not None
            self._stopping = True
        if loop is None or thread is None:
            return
        if first:
            # Stop taking new requests.
            self._intake.stop()
            loop.call_soon_threadsafe(self._begin_stop, timeout)
        if threading.current_thread() is not thread:
            thread.join(timeout + _UNWIND_GRACE + 5.0)
            self._intake.join(1.0)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the loop thread ---------------------------------------------------------------------

    def _run_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._slots = asyncio.Semaphore(self.concurrency)
        self._stop_requested = asyncio.Event()
        self._intake_done = asyncio.Event()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="isolated-api-engine-worker")
        self._runtime = GroupRuntime(
            loop=loop,
            slots=self._slots,
            pool=self._pool,
            sink=self._sink,
            hold_intake=self._intake.hold,
            finish=self._finish,
            metrics=self.metrics,
            meet_server=lambda group: meet_server(self._response_q, group, self.metrics),
        )
        for group in self._handlers.groups():
            loop.call_soon(self._bind, group)
        try:
            loop.call_soon(self._ready.set)
            if self._heartbeat is not None:
                loop.call_soon(self._beat)
            loop.run_until_complete(self._serve_until_stopped())
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            loop.close()
            self._sink.close()
            self._finished.set()

    def _beat(self) -> None:
        # From the loop itself: a beat shows the loop that dispatches requests still turns.
        if self._stopping or self._heartbeat is None or self._loop is None:
            return
        self._sink.put(Heartbeat())
        self._loop.call_later(self._heartbeat, self._beat)

    def _begin_stop(self, timeout: float) -> None:
        self._stop_timeout = timeout
        self._stop_requested.set()

    async def _serve_until_stopped(self) -> None:
        await self._stop_requested.wait()
        timeout = self._stop_timeout or 0.0
        groups = [group for group in self._handlers.groups() if group.runner is not None]
        # Batches forming go at once (no more max_wait); steppers serve their streams on.
        for group in groups:
            group.close()
        # Let in-flight requests finish within the timeout.
        tasks: list[asyncio.Future[Any]] = [job.task for job in self._jobs.values() if job.task is not None]
        drains: list[asyncio.Future[Any]] = [asyncio.ensure_future(group.drained()) for group in groups]
        if tasks or drains:
            await asyncio.wait(tasks + drains, timeout=timeout)
        for drain in drains:
            drain.cancel()
        # Cancel what is left; its clients are still waiting, so they get a 503.
        left = list(self._jobs.values())
        for job in left:
            if job.cancel(STOPPED_REASON, ErrorReply(job.id, "the engine stopped before this request finished", 503)):
                self.cancelled += 1
                if job.group is not None:
                    job.group.cancelled(job)
        tasks = [job.task for job in left if job.task is not None]
        for group in groups:
            tasks += group.unwinding()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_UNWIND_GRACE)
            for task in pending:  # sync handlers that ignore ctx.cancelled: their threads go on alone
                task.cancel()
            if pending:
                logger.warning("%d handler(s) still running after stop(); abandoned", len(pending))
                await asyncio.wait(pending)
        # The intake takes what was queued before its sentinel (refused with 503 meanwhile).
        try:
            await asyncio.wait_for(self._intake_done.wait(), _UNWIND_GRACE)
        except TimeoutError:
            logger.warning("the engine's request reader did not reach its stop sentinel")

    # -- dispatch (intake thread -> loop thread) ---------------------------------------------

    def _deliver(self, batch: list[Any]) -> bool:
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(self._dispatch, batch)
        except RuntimeError:  # the loop is closed: the engine stopped
            return False
        return True

    def _intake_exited(self) -> None:
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._intake_done.set)
            except RuntimeError:  # the loop is closed already
                pass

    def _dispatch(self, batch: list[Any]) -> None:
        for message in batch:
            try:
                started = self._accept(message)
            except Exception:  # one odd message must not cost the rest of the batch
                logger.exception("could not dispatch a %s from request_q", type(message).__name__)
                started = False
            if not started:
                self._intake.release()

    def _accept(self, message: Any) -> bool:
        """Starts a job for ``message``; False when the message needed no slot (answered, or not a request)."""
        if self._decode is not None and type(message) is bytes:
            message = self._decode(message)
        kind = type(message)
        if kind is CancelRequest:
            job = self._jobs.get(message.id)
            if job is not None and job.cancel(message.reason):
                self.cancelled += 1
                if job.group is not None:
                    job.group.cancelled(job)
            return False
        if kind is StopIntake:  # a previous engine's sentinel
            return False
        request_id = getattr(message, "id", _MISSING)
        try:
            known = request_id in self._jobs
        except TypeError:
            known = True
        if request_id is _MISSING or known:
            logger.warning("dropped a %s from request_q: no hashable .id, or its id is in flight", kind.__name__)
            return False
        if kind is HealthPing:
            self._sink.put(self._health(request_id))
            return False
        handler = self._handlers.lookup(kind)
        if self._stopping or handler is None:
            self.refused += 1
            reply = (
                ErrorReply(request_id, "the engine is stopping", 503)
                if self._stopping
                else ErrorReply(request_id, f"no handler for {kind.__name__}", 501)
            )
            self._sink.put(reply)
            return False
        job = Job(request_id, message, self._sink)
        self._jobs[request_id] = job
        if not isinstance(handler, Handler):
            # A batcher or stepper: counted against its own max_queued, not the intake's limit.
            if handler.runner is None:
                self._bind(handler)
            handler.add(job)
            return False
        job.task = asyncio.get_running_loop().create_task(self._serve(handler, job))
        return True

    def _finish(self, job: Job, failed: bool) -> None:
        """A batcher's or stepper's member left the engine."""
        if self._jobs.get(job.id) is job:
            del self._jobs[job.id]
        if failed:
            self.failed += 1
        elif not job.context.cancelled:
            self.served += 1

    async def _serve(self, handler: Handler, job: Job) -> None:
        try:
            async with self._slots:
                failed = await run_job(handler, job, self._pool)
            if failed:
                self.failed += 1
            elif not job.context.cancelled:
                self.served += 1
        except asyncio.CancelledError:
            pass  # cancelled by a CancelRequest or by stop(): Job already settled what is sent
        finally:
            if self._jobs.get(job.id) is job:
                del self._jobs[job.id]
            self._intake.release()

    def _health(self, request_id: Hashable) -> HealthStatus:
        return HealthStatus(request_id, len(self._jobs), self.concurrency, self.served, self.failed, self.cancelled)


def _codec_functions(codec: Any) -> tuple[Encode, Callable[[bytes], Any] | None]:
    """With a binary codec (``MsgspecCodec``) the queues carry bytes: decode requests, encode
    replies (engine messages in their ``wire`` form). Otherwise the queues carry objects."""
    if codec is None or not getattr(codec, "binary", False):
        return None, None
    from isolated_api.engine.wire import from_wire, to_wire

    def encode(message: Any) -> bytes:
        # A list is several replies in one message (a batch's results, a step's chunks).
        wire = [to_wire(m) for m in message] if type(message) is list else to_wire(message)
        data: bytes = codec.encode(wire)
        return data

    def decode(data: bytes) -> Any:
        return from_wire(codec.decode(data))

    return encode, decode
