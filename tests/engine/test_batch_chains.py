"""How a sync batch function's calls reach its worker threads: the real ``Batcher`` on an asyncio
loop, with a pool and a loop that record what they are handed. While members are queued, the
thread whose call ended forms and calls the next batch itself (no hop through the loop and back to
a thread), and a batch's ``max_wait`` is waited out in that thread, not on the loop's timers."""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from isolated_api.engine.batching import Batcher, BatchOptions
from isolated_api.engine.group import Group, GroupRuntime
from isolated_api.engine.job import Job, ReplySink
from isolated_api.engine.messages import Result
from isolated_api.engine.metrics import EngineMetrics
from tests.helpers import eventually


class _CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(2)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


class _Model:
    """Upper-cases its requests; records each call and when it began. Its first call waits for
    ``release`` (so the test can queue members behind it)."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.calls: list[list[str]] = []
        self.began: list[float] = []
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, requests: list[str]) -> list[str]:
        self.calls.append(list(requests))
        self.began.append(self.clock())
        self.running.set()
        if len(self.calls) == 1:
            self.release.wait(10)
        return [r.upper() for r in requests]


async def _serve(texts: list[str], options: BatchOptions, first: int, hold_first: bool) -> dict[str, Any]:
    """Serves ``texts`` (the ``first`` ones, then the rest queued behind their call when
    ``hold_first``);
    returns the calls, their start times, each member's arrival, the pool's submissions, the timers
    the batcher set on the loop meanwhile, and the replies."""
    loop = asyncio.get_running_loop()
    finished: list[Job] = []
    all_served = asyncio.Event()
    timers = 0
    posts = 0
    call_at = loop.call_at
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counting_call_soon_threadsafe(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        nonlocal posts
        posts += 1  # a wake-up of the loop from a worker thread
        return call_soon_threadsafe(callback, *args, **kwargs)

    def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal timers
        # The engine's own timers (a batch's max_wait), not the test's deadlines.
        timers += getattr(callback, "__module__", "").startswith("isolated_api.")
        return call_at(when, callback, *args, **kwargs)

    def finish(job: Job, failed: bool) -> None:
        finished.append(job)
        if len(finished) == len(texts):
            all_served.set()

    def meet(group: Group) -> bool:
        return True

    response_q: queue.Queue[Any] = queue.Queue()
    sink = ReplySink(response_q)
    model = _Model(loop.time)
    if not hold_first:
        model.release.set()
    jobs = [Job(text, text, sink) for text in texts]
    with _CountingPool() as pool:
        rt = GroupRuntime(
            loop, asyncio.Semaphore(8), pool, sink, lambda group, full: None, finish, EngineMetrics(), meet
        )
        batcher = Batcher(model, options)
        batcher.bind(rt)
        loop.call_at = counting_call_at  # type: ignore[method-assign,assignment]  # from here on: the batcher's timers
        loop.call_soon_threadsafe = counting_call_soon_threadsafe  # type: ignore[method-assign,assignment]
        for job in jobs[:first]:
            batcher.add(job)
        if hold_first:
            await eventually(model.running.is_set, "the first call")
        for job in jobs[first:]:
            batcher.add(job)
        model.release.set()
        await asyncio.wait_for(all_served.wait(), 10)
        loop.call_at = call_at  # type: ignore[method-assign]
        loop.call_soon_threadsafe = call_soon_threadsafe  # type: ignore[method-assign]
        batcher.close()
        assert batcher.runner is not None
        await asyncio.wait_for(batcher.runner, 10)
    sink.close()
    replies = []
    while not response_q.empty():
        message = response_q.get()
        replies += message if type(message) is list else [message]
    return {
        "calls": model.calls,
        "began": model.began,
        "arrived": [job.arrived for job in jobs],
        "submitted": pool.submitted,
        "timers": timers,
        "posts": posts,
        "replies": replies,
    }


def test_batch_chain_the_thread_whose_call_ended_calls_the_next_batch_itself() -> None:
    """Steps: batches of 1, no wait; a's call held while b, c and d queue; then released. Expect
    four calls in order, every member its own reply, and ONE call handed to the pool: the thread
    of a's call went on to b, c and d (one pool hand-off per batch would be 4)."""
    out = asyncio.run(_serve(list("abcd"), BatchOptions(max_batch_size=1, max_wait=0), first=1, hold_first=True))
    assert out["calls"] == [["a"], ["b"], ["c"], ["d"]]
    assert sorted(out["replies"], key=lambda r: str(r.id)) == [Result(t, t.upper()) for t in "abcd"]
    assert out["submitted"] == 1


def test_batch_chain_takes_a_full_batch_at_once_and_keeps_the_batch_size() -> None:
    """Steps: batches of 2 with a max_wait far past the test's deadline (60 s); [a, b] (full) held
    while c..f queue; released. Expect [c, d] and [e, f] at once (full: no max_wait waited out),
    called by the same thread: one pool hand-off."""
    options = BatchOptions(max_batch_size=2, max_wait=60)
    out = asyncio.run(_serve(list("abcdef"), options, first=2, hold_first=True))
    assert out["calls"] == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert len(out["replies"]) == 6
    assert out["submitted"] == 1


def test_batch_a_lone_members_max_wait_is_waited_out_in_the_worker_thread() -> None:
    """Steps: one member, max_wait 50 ms. Expect its call no sooner than 50 ms after it arrived,
    one pool hand-off, and no timer set on the loop for it: the wait is the worker thread's own
    (to the microsecond), not the loop's timer (epoll rounds its timeout up to the millisecond)
    followed by a hop to a thread."""
    out = asyncio.run(_serve(["alone"], BatchOptions(max_batch_size=8, max_wait=0.05), first=1, hold_first=False))
    assert out["calls"] == [["alone"]]
    assert out["began"][0] - out["arrived"][0] >= 0.05
    assert out["submitted"] == 1
    assert out["timers"] == 0
    assert out["replies"] == [Result("alone", "ALONE")]


def test_batch_a_lone_members_call_wakes_the_loop_once() -> None:
    """Steps: one member, no wait, nothing else queued. Expect one wake-up of the loop from the
    worker thread (the chain's end, which counts the batch and sends nothing more), not one more
    when its members are taken: the loop has nothing to do then (the intake's gate is open, no
    other chain could start)."""
    out = asyncio.run(_serve(["alone"], BatchOptions(max_batch_size=8, max_wait=0), first=1, hold_first=False))
    assert out["calls"] == [["alone"]]
    assert out["replies"] == [Result("alone", "ALONE")]
    assert out["posts"] == 1


def test_batch_a_chain_taking_members_from_a_full_queue_reopens_the_intake_before_its_call() -> None:
    """Steps: batches of 2, max_queued 3, a pool of one thread kept busy, so the chain started for
    the first member cannot run yet; a, b and c queued (the intake's gate closes); the pool freed,
    [a, b]'s call held. Expect the gate open again while that call runs: the loop hears at once
    that a chain took members from a full queue, and does not wait for the call's end to read
    request_q again."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        gate: list[bool] = []
        finished: list[Job] = []
        busy, release = threading.Event(), threading.Event()
        calls: list[list[str]] = []

        def model(requests: list[str]) -> list[str]:
            calls.append(list(requests))
            if len(calls) == 1:
                release.wait(10)
            return [r.upper() for r in requests]

        def meet(group: Group) -> bool:
            return True

        response_q: queue.Queue[Any] = queue.Queue()
        sink = ReplySink(response_q)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(busy.wait, 10)  # the pool's one thread, taken until busy is set
            rt = GroupRuntime(
                loop,
                asyncio.Semaphore(8),
                pool,
                sink,
                lambda group, full: gate.append(full),
                lambda job, failed: finished.append(job),
                EngineMetrics(),
                meet,
            )
            batcher = Batcher(model, BatchOptions(max_batch_size=2, max_queued=3, max_wait=0))
            batcher.bind(rt)
            for text in "abc":
                batcher.add(Job(text, text, sink))
            assert gate == [True]
            await eventually(lambda: batcher.running == 1, "the chain to be handed to the pool")
            busy.set()
            await eventually(lambda: len(calls) == 1, "the first call")
            await eventually(lambda: gate == [True, False], "the gate to open while the first call runs")
            assert calls == [["a", "b"]] and not finished
            release.set()
            await eventually(lambda: len(finished) == 3, "every member served")
            batcher.close()
            assert batcher.runner is not None
            await asyncio.wait_for(batcher.runner, 10)
        sink.close()

    asyncio.run(scenario())
