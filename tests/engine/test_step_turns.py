"""How a sync stepper's turns reach its worker threads: the real ``Stepper`` on an asyncio loop,
with a pool that records what it is handed. A turn's ``leave``, ``join`` and ``step`` go to the
pool as ONE call, so a newcomer's first step does not wait for two more hops through the loop."""

from __future__ import annotations

import asyncio
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from isolated_api import Done
from isolated_api.engine.group import Group, GroupRuntime
from isolated_api.engine.job import Job, ReplySink
from isolated_api.engine.metrics import EngineMetrics
from isolated_api.engine.stepping import Stepper


class _CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(2)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


class _Counter:
    """Streams of ``request`` tokens; every call of each method recorded, in order."""

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}
        self.log: list[str] = []

    def join(self, requests: list[int]) -> None:
        self.log.append(f"join {requests}")
        self.sent.update({r: 0 for r in requests})

    def step(self, active: list[int]) -> list[Any]:
        self.log.append(f"step {active}")
        out: list[Any] = []
        for r in active:
            self.sent[r] += 1
            out.append(Done("t") if self.sent[r] == r else "t")
        return out

    def leave(self, request: int, why: str) -> None:
        self.log.append(f"leave {request} {why}")


async def _serve(lengths: list[int]) -> tuple[int, list[str], list[Any]]:
    loop = asyncio.get_running_loop()
    finished: list[Job] = []
    all_served = asyncio.Event()

    def finish(job: Job, failed: bool) -> None:
        finished.append(job)
        if len(finished) == len(lengths):
            all_served.set()

    def meet(group: Group) -> bool:
        return True

    response_q: queue.Queue[Any] = queue.Queue()
    sink = ReplySink(response_q)
    counter = _Counter()
    with _CountingPool() as pool:
        rt = GroupRuntime(
            loop, asyncio.Semaphore(8), pool, sink, lambda group, full: None, finish, EngineMetrics(), meet
        )
        stepper = Stepper(counter, max_active=8, max_queued=None)
        stepper.bind(rt)
        for length in lengths:
            stepper.add(Job(length, length, sink))
        await asyncio.wait_for(all_served.wait(), 10)
        stepper.close()
        assert stepper.runner is not None
        await asyncio.wait_for(stepper.runner, 10)
    sink.close()
    messages = []
    while not response_q.empty():
        messages.append(response_q.get())
    return pool.submitted, counter.log, messages


def test_step_turns_leave_join_and_step_of_a_turn_are_one_worker_thread_call() -> None:
    """Steps: two streams of 2 and 3 tokens join together. Expect three turns with a step (the
    first one joining both) and one turn in which the last stream leaves: 4 calls handed to the
    pool, where one per method called would be 6 (join, 3 steps, 2 leaves); each stream its
    tokens and leave("done") once, the first before the step after its end."""
    submitted, log, messages = asyncio.run(_serve([2, 3]))
    assert log == ["join [2, 3]", "step [2, 3]", "step [2, 3]", "leave 2 done", "step [3]", "leave 3 done"]
    assert submitted == 4
    chunks = [chunk for message in messages for chunk in (message if type(message) is list else [message])]
    assert [(c.id, c.data, c.is_final) for c in chunks if c.id == 2] == [(2, "t", False), (2, "t", True)]
    assert [(c.id, c.is_final) for c in chunks if c.id == 3] == [(3, False), (3, False), (3, True)]
