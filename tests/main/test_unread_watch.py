"""UnreadWatch: which of the relay's messages wait unread on request_q, read by another process."""

from __future__ import annotations

import multiprocessing
import queue
from typing import Any

from isolated_api.main.unread_watch import UnreadWatch
from isolated_api.testing import wait_until

_ctx = multiprocessing.get_context("spawn")


def _put(watch: UnreadWatch, q: Any, item: Any) -> None:
    watch.starting()
    q.put(item)
    watch.done()


def _read(request_q: Any, count: int, done: Any) -> None:
    for _ in range(count):
        request_q.get()
    done.set()


def test_unread_watch_counts_what_another_process_has_not_read_yet() -> None:
    """Steps: three messages on a multiprocessing queue; a process reads two of them. Expect three
    unread, then one, then none once the third is read here."""
    request_q: Any = _ctx.Queue()
    watch = UnreadWatch(request_q)
    assert watch.counts and watch.unread() == (0, 0.0)
    for item in range(3):
        _put(watch, request_q, item)
    wait_until(lambda: request_q.qsize() == 3, 10, "three messages in the queue")
    assert (watch.unread() or (0, 0.0))[0] == 3
    done = _ctx.Event()
    reader = _ctx.Process(target=_read, args=(request_q, 2, done), daemon=True)
    reader.start()
    try:
        assert done.wait(30)
        count, oldest = watch.unread() or (0, 0.0)
        assert count == 1 and 0 < oldest
    finally:
        reader.join(10)
    assert request_q.get(timeout=10) == 2
    assert watch.unread() == (0, 0.0)
    request_q.close()
    request_q.join_thread()


def test_unread_watch_does_not_count_a_put_under_way_and_forgets_a_failed_one() -> None:
    q: queue.Queue[Any] = queue.Queue()
    watch = UnreadWatch(q)
    _put(watch, q, "read")
    q.get()
    # In the queue but not noted yet: the note left is of a message already read.
    watch.starting()
    q.put("new")
    assert watch.unread() == (0, 0.0)
    watch.done()
    count, _age = watch.unread() or (0, 0.0)
    assert count == 1
    watch.starting()
    watch.failed()
    assert (watch.unread() or (0, 0.0))[0] == 1


def test_unread_watch_says_nothing_for_a_queue_that_cannot_count() -> None:
    simple = _ctx.SimpleQueue()
    watch = UnreadWatch(simple)
    _put(watch, simple, "x")
    assert not watch.counts and watch.unread() is None
    simple.close()
