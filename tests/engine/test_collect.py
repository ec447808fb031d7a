"""``collect``: a plain loop's batch from a real ``spawn`` queue: order, size, the wait counted
from the first message, ``[]`` on timeout, and no busy polling while it waits."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest

from isolated_api import collect

Queues = tuple[Any, Any]


def test_collect_takes_up_to_max_size_in_queue_order(queues: Queues) -> None:
    """Steps: 12 messages put; collect(max_size=4) three times with a long max_wait. Expect them
    in queue order, 4 at a time, each call returning once full."""
    request_q, _ = queues
    for i in range(12):
        request_q.put(i)
    assert [collect(request_q, max_size=4, max_wait=30) for _ in range(3)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
    ]


def test_collect_returns_empty_on_timeout(queues: Queues) -> None:
    request_q, _ = queues
    started = time.monotonic()
    assert collect(request_q, timeout=0.1) == []
    assert 0.1 <= time.monotonic() - started < 5


def test_collect_waits_for_a_first_message_then_for_company_until_full(queues: Queues) -> None:
    """Steps: collect(max_size=3, max_wait=30) on an empty queue; a thread puts 3 messages one by
    one. Expect all 3, in order, returned as soon as the third came (long before max_wait)."""
    request_q, _ = queues
    got: list[list[Any]] = []
    collector = threading.Thread(target=lambda: got.append(collect(request_q, max_size=3, max_wait=30)))
    collector.start()
    for item in ("a", "b", "c"):
        request_q.put(item)
    collector.join(20)
    assert not collector.is_alive() and got == [["a", "b", "c"]]


def test_collect_max_wait_counts_from_the_first_message_and_never_spins(queues: Queues) -> None:
    """Steps: one message queued, collect(max_wait=0.5). Expect it alone, after about max_wait,
    with the calling thread nearly idle meanwhile (blocking gets, no polling loop)."""
    request_q, _ = queues
    request_q.put("only")
    started, cpu = time.monotonic(), time.thread_time()
    assert collect(request_q, max_size=8, max_wait=0.5) == ["only"]
    elapsed, used = time.monotonic() - started, time.thread_time() - cpu
    assert 0.5 <= elapsed < 10
    assert used < 0.1, f"collect() used {used:.3f} s of CPU while waiting {elapsed:.3f} s"


def test_collect_max_wait_zero_takes_only_what_is_queued() -> None:
    # A thread queue: what put() returned from is queued (a multiprocessing queue's feeder thread
    # writes in the background, so "already queued" there is a matter of microseconds).
    plain: queue.Queue[int] = queue.Queue()
    for i in (1, 2, 3):
        plain.put(i)
    assert collect(plain, max_size=8, max_wait=0) == [1, 2, 3]
    assert collect(plain, max_wait=0, timeout=0) == []


def test_collect_refuses_bad_arguments() -> None:
    plain: queue.Queue[int] = queue.Queue()
    with pytest.raises(ValueError, match="max_size"):
        collect(plain, max_size=0)
    with pytest.raises(ValueError, match="max_wait"):
        collect(plain, max_wait=-1)
