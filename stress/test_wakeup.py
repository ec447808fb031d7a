"""(e) Waking a waiter: the time from the main process putting a reply on ``response_q`` to the
awaiting coroutine running again, with 1, 64 and 1,000 requests waiting (in-process channel:
queue, relay reader, loop hand-off, registry lookup)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import pytest

from isolated_api import IPCChannel
from isolated_api.shared.config import IPCConfig
from stress.figures import Figures
from stress.loadgen import percentile
from stress.servers import Echoer, Probe, close_queues

pytestmark = pytest.mark.stress

SAMPLES = 300


async def _wake_times(channel: IPCChannel, echoer: Echoer, waiters: int) -> list[float]:
    # waiters - 1 requests the main process holds, so every probe has that many neighbours.
    held = [asyncio.ensure_future(channel.submit(Probe(f"held-{waiters}-{i}", hold=True))) for i in range(waiters - 1)]
    deadline = time.monotonic() + 30
    while echoer.held < waiters - 1:
        assert time.monotonic() < deadline, "the held requests did not reach the main process"
        await asyncio.sleep(0.005)
    assert channel.pending_count == waiters - 1
    samples = []
    for i in range(SAMPLES):
        reply = await channel.submit(Probe(f"probe-{waiters}-{i}"))
        samples.append(time.perf_counter() - reply.put_at)
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert channel.pending_count == 0
    return samples


@pytest.mark.timeout(120)
def test_stress_waiter_wakeup(figures: Figures) -> None:
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    echoer = Echoer(request_q, response_q)

    async def scenario() -> dict[int, list[float]]:
        channel = IPCChannel(request_q, response_q, IPCConfig(max_pending=2000), response_timeout=60)
        await channel.start_polling()
        try:
            results = {}
            for waiters in (1, 64, 1000):
                echoer.held = 0
                results[waiters] = await _wake_times(channel, echoer, waiters)
            return results
        finally:
            await channel.stop_polling()

    try:
        results = asyncio.run(scenario())
    finally:
        echoer.stop()
        close_queues(request_q, response_q)
    rows = []
    for waiters, samples in results.items():
        assert len(samples) == SAMPLES
        # Generous sanity bound: a wake-up is not stuck behind a poll interval or a scan of the waiters.
        assert percentile(samples, 0.5) < 0.05
        rows.append(
            [
                str(waiters),
                str(len(samples)),
                f"{percentile(samples, 0.5) * 1e6:.0f}",
                f"{percentile(samples, 0.99) * 1e6:.0f}",
                f"{max(samples) * 1e6:.0f}",
            ]
        )
    figures.table(
        "waking a waiter: reply put on response_q -> awaiting coroutine resumed (in-process channel, us)",
        ["waiters", "samples", "p50 us", "p99 us", "max us"],
        rows,
    )
