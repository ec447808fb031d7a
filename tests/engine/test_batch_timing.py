"""When a batch goes, exactly: the real ``Batcher`` on a virtual clock (``run_virtual``), against a
model of the rule in docs/batching.md. A batch goes when it is full, or ``max_wait`` after its first
member arrived, and never before its batch slot is free; ``max_wait=0`` takes what is queued.

Arrivals are whole milliseconds, ``max_wait`` and the model's call time whole plus a fraction
(.5, .37), so no timer fires at the very instant of an arrival within 30 batches (where the order
of the two would be a coin toss, in the model as on a real loop)."""

from __future__ import annotations

import asyncio
import queue
from concurrent.futures import ThreadPoolExecutor

from hypothesis import given, settings
from hypothesis import strategies as st

from isolated_api.engine.batching import Batcher, BatchOptions
from isolated_api.engine.group import Group, GroupRuntime
from isolated_api.engine.job import Job, ReplySink
from isolated_api.engine.metrics import EngineMetrics
from isolated_api.testing import run_virtual

MS = 0.001


def _model(arrivals: list[float], size: int, max_wait: float, service: float) -> list[tuple[float, list[int]]]:
    """(start time, member indexes) of each batch, one batch at a time."""
    batches: list[tuple[float, list[int]]] = []
    slot_free, first = 0.0, 0
    while first < len(arrivals):
        full_at = arrivals[first + size - 1] if first + size - 1 < len(arrivals) else float("inf")
        start = max(slot_free, arrivals[first], min(arrivals[first] + max_wait, full_at))
        members = [i for i in range(first, min(first + size, len(arrivals))) if arrivals[i] <= start]
        batches.append((start, members))
        slot_free = start + service
        first = members[-1] + 1
    return batches


async def _serve(arrivals: list[float], size: int, max_wait: float, service: float) -> list[tuple[float, list[int]]]:
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, list[int]]] = []
    finished: list[Job] = []
    all_served = asyncio.Event()

    def finish(job: Job, failed: bool) -> None:
        finished.append(job)
        if len(finished) == len(arrivals):
            all_served.set()

    async def fn(requests: list[int]) -> list[int]:
        calls.append((loop.time(), list(requests)))
        await asyncio.sleep(service)
        return requests

    sink = ReplySink(queue.Queue())
    with ThreadPoolExecutor(1) as pool:

        def meet(group: Group) -> bool:
            return True

        rt = GroupRuntime(
            loop=loop,
            slots=asyncio.Semaphore(100),
            pool=pool,
            sink=sink,
            hold_intake=lambda group, full: None,
            finish=finish,
            metrics=EngineMetrics(),
            meet_server=meet,
        )
        batcher = Batcher(fn, BatchOptions(max_batch_size=size, max_wait=max_wait, max_queued=10_000))
        batcher.bind(rt)
        for index, at in enumerate(arrivals):
            if at > loop.time():  # arrivals at one instant come in one go, as the intake delivers them
                await asyncio.sleep(at - loop.time())
            batcher.add(Job(index, index, sink))
        await all_served.wait()
        batcher.close()
        assert batcher.runner is not None
        await batcher.runner
    sink.close()
    return calls


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 12), min_size=1, max_size=30),
    size=st.integers(1, 6),
    wait_ms=st.integers(0, 15),
    service_ms=st.integers(0, 10),
)
def test_batch_timing_goes_when_full_or_max_wait_after_its_first_member(
    gaps: list[int], size: int, wait_ms: int, service_ms: int
) -> None:
    arrivals: list[float] = []
    now = 1
    for gap in gaps:
        now += gap
        arrivals.append(now * MS)
    # max_wait=0 exactly (takes what is queued), else a fraction off the millisecond grid.
    max_wait = 0.0 if wait_ms == 0 else (wait_ms + 0.5) * MS
    service = (service_ms + 0.37) * MS
    calls: list[tuple[float, list[int]]] = []

    async def go() -> None:
        calls.extend(await _serve(arrivals, size, max_wait, service))

    run_virtual(go())
    expected = _model(arrivals, size, max_wait, service)
    assert [members for _, members in calls] == [members for _, members in expected]
    for (started, _), (want, _) in zip(calls, expected, strict=True):
        assert abs(started - want) < 1e-9


def test_batch_timing_a_member_that_waited_for_the_slot_goes_at_once() -> None:
    """One batch at a time, max_wait 10 ms, a call of 50 ms: a request arriving 1 ms into the first
    call has waited past its max_wait when the slot frees, so its batch starts at that instant."""
    calls: list[tuple[float, list[int]]] = []

    async def go() -> None:
        calls.extend(await _serve([0.0, 0.0115], 4, 0.010, 0.050))

    run_virtual(go())
    assert [(round(t, 6), m) for t, m in calls] == [(0.010, [0]), (0.060, [1])]
