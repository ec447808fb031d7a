"""UnreadWatch: which of the relay's messages wait unread on request_q, read by another process."""

from __future__ import annotations

import multiprocessing
import queue
from typing import Any

from isolated_api.main.unread_watch import Unread, UnreadWatch
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
    assert watch.counts and _count(watch) == 0
    for item in range(3):
        _put(watch, request_q, item)
    wait_until(lambda: request_q.qsize() == 3, 10, "three messages in the queue")
    assert _count(watch) == 3
    done = _ctx.Event()
    reader = _ctx.Process(target=_read, args=(request_q, 2, done), daemon=True)
    reader.start()
    try:
        assert done.wait(30)
        unread = watch.unread()
        assert unread is not None and unread.count == 1 and unread.oldest_age > 0
    finally:
        reader.join(10)
    assert request_q.get(timeout=10) == 2
    assert _count(watch) == 0
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
    assert _count(watch) == 0
    watch.done()
    assert _count(watch) == 1
    watch.starting()
    watch.failed()
    assert _count(watch) == 1


def test_unread_watch_tells_a_backlog_being_read_from_a_reader_that_stopped() -> None:
    """Steps: three messages; a look; one read, a look; then no read between looks. Expect the
    quiet time to start again at the look after the read, and to grow while nothing is read (the
    oldest unread message aging all along)."""
    q: queue.Queue[Any] = queue.Queue()
    watch = UnreadWatch(q)
    for item in range(3):
        _put(watch, q, item)
    before = _unread(watch)
    wait_until(lambda: _unread(watch).quiet_age > before.quiet_age, 10, "time to pass")
    q.get()
    after_read = _unread(watch)
    assert after_read.count == 2 and after_read.quiet_age == 0.0
    wait_until(lambda: _unread(watch).quiet_age > 0.05, 10, "the quiet time to grow")
    assert _unread(watch).oldest_age > 0.05


def _unread(watch: UnreadWatch) -> Unread:
    unread = watch.unread()
    assert unread is not None, "a multiprocessing.Queue counts its unread messages (qsize works on Linux)"
    return unread


def _count(watch: UnreadWatch) -> int:
    return _unread(watch).count


def test_unread_watch_says_nothing_for_a_queue_that_cannot_count() -> None:
    simple = _ctx.SimpleQueue()
    watch = UnreadWatch(simple)
    _put(watch, simple, "x")
    assert not watch.counts and watch.unread() is None
    simple.close()
