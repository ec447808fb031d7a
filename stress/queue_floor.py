"""The floor the one-connection figures are read against: the p50 of a bare
``multiprocessing.Queue`` round trip between two processes (put, the other process gets it and
puts it back, get), since each cross-process wake-up costs what it costs on the machine at hand."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from typing import Any


def _echo_back(inbox: Any, outbox: Any) -> None:
    while (item := inbox.get()) is not None:
        outbox.put(item)


def bare_queue_round_trip(count: int = 2000, warmup: int = 200) -> float:
    """p50 seconds of ``count`` round trips, after ``warmup`` that warm up both processes."""
    ctx = multiprocessing.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_echo_back, args=(inbox, outbox), daemon=True)
    child.start()
    try:
        seconds: list[float] = []
        for i in range(count + warmup):
            started = time.perf_counter()
            inbox.put(i)
            assert outbox.get(timeout=10) == i
            if i >= warmup:
                seconds.append(time.perf_counter() - started)
        inbox.put(None)
        child.join(10)
        return statistics.median(seconds)
    finally:
        if child.is_alive():
            child.kill()
        for q in (inbox, outbox):
            q.cancel_join_thread()
            q.close()
