"""The channel's shared timeout timers, on a virtual clock (time jumps to the next timer): every
request expires exactly at its deadline, a finished one never, one timer serves many requests,
and finished entries do not pile up behind a slow one. The ``asyncio.sleep`` calls below take no
real time: on this loop they move the clock to a chosen instant, which is what is under test."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

from isolated_api.shared.errors import IPCTimeoutError
from isolated_api.testing import VirtualClockLoop
from isolated_api.worker.deadlines import Deadlines


class CountingLoop(VirtualClockLoop):
    """Counts the timers armed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = 0

    def call_at(  # type: ignore[override]  # counts, then defers to the real one
        self, when: float, callback: Callable[..., object], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.TimerHandle:
        self.armed += 1
        return super().call_at(when, callback, *args, context=context)


def _run(scenario: Callable[[CountingLoop], Any]) -> Any:
    loop = CountingLoop()
    try:
        return loop.run_until_complete(scenario(loop))
    finally:
        loop.close()


def test_deadlines_expire_each_request_at_its_own_deadline_and_never_a_finished_one() -> None:
    """Steps: at t=0, 1, 2 add requests with a 5 s timeout, one with 2 s at t=0; finish the t=1
    one at t=3. Expect: timeouts at exactly 2, 5 and 7; the finished one never fails."""

    async def scenario(loop: CountingLoop) -> dict[str, float]:
        deadlines = Deadlines(loop)
        failed_at: dict[str, float] = {}

        def watch(name: str) -> asyncio.Future[Any]:
            future: asyncio.Future[Any] = loop.create_future()

            def done(f: asyncio.Future[Any]) -> None:
                assert isinstance(f.exception(), IPCTimeoutError)
                failed_at[name] = loop.time()

            future.add_done_callback(done)
            return future

        deadlines.add(watch("a"), "a", 5.0)
        deadlines.add(watch("short"), "short", 2.0)
        await asyncio.sleep(1)
        b = deadlines.add(watch("b"), "b", 5.0)
        await asyncio.sleep(1)
        deadlines.add(watch("c"), "c", 5.0)
        await asyncio.sleep(1)
        b.cancel()
        await asyncio.sleep(10)
        assert deadlines.held == 0
        return failed_at

    assert _run(scenario) == {"short": 2.0, "a": 5.0, "c": 7.0}


def test_deadlines_arm_one_timer_for_many_requests_and_keep_few_finished_entries() -> None:
    """Steps: one request that never finishes, then 10,000 that finish at once, then 1,000 in
    flight together. Expect: two timers armed in all (one per timeout value in use); at most
    twice the entries in flight kept plus a small constant."""

    async def scenario(loop: CountingLoop) -> tuple[int, int, int]:
        deadlines = Deadlines(loop)
        deadlines.add(loop.create_future(), "slow", 30.0)
        most_held = 0
        for i in range(10_000):
            deadlines.add(loop.create_future(), i, 30.0).cancel()
            most_held = max(most_held, deadlines.held)
        for i in range(1_000):
            deadlines.add(loop.create_future(), ("x", i), 60.0)
        held = deadlines.held
        deadlines.close()
        return loop.armed, most_held, held

    armed, most_held, held = _run(scenario)
    assert armed == 2
    assert most_held <= 2 * 64 + 1
    assert held <= most_held + 1_000


def test_deadlines_past_eight_timeout_values_give_a_request_its_own_timer_and_close_stops_the_rest() -> None:
    """Steps: add requests with nine distinct timeouts (1..9 s), close at once, let the clock run.
    Expect: nine timers armed, the ninth request's its own (it still fails, at exactly 9 s: the
    channel it belongs to fails its requests on close anyway, so that timer finds it done); the
    eight in the shared FIFOs never fail after close."""

    async def scenario(loop: CountingLoop) -> tuple[int, list[float | None]]:
        deadlines = Deadlines(loop)
        futures = [loop.create_future() for _ in range(9)]
        failed_at: list[float | None] = [None] * 9

        def note(i: int) -> Callable[[asyncio.Future[Any]], None]:
            def done(future: asyncio.Future[Any]) -> None:
                failed_at[i] = loop.time() if future.exception() else None

            return done

        for i, future in enumerate(futures):
            future.add_done_callback(note(i))
            deadlines.add(future, i, float(i + 1))
        armed = loop.armed
        deadlines.close()
        await asyncio.sleep(100)
        return armed, failed_at

    armed, failed_at = _run(scenario)
    assert armed == 9
    assert failed_at == [None] * 8 + [9.0]
