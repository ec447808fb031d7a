"""``put_now`` (queue_access.py) writes into a ``multiprocessing.Queue`` from the caller's thread; a
bounded queue that nobody empties must not hold that thread (the main loop's) for ever."""

from __future__ import annotations

import multiprocessing
import queue
import threading
from typing import Any

from isolated_api.main.pipe_size import PIPE_SIZE, pipe_size
from isolated_api.main.queue_access import PUT_TIMEOUT, RequestWriter, put_now


def test_queue_access_put_now_gives_up_on_a_full_bounded_queue_with_queue_full() -> None:
    """Steps: fill a bounded queue of one, put_now a second message from a thread with a short
    timeout, then make room. Expected: put_now raises queue.Full (it returns, rather than block for
    ever), the second message is not in the queue, and put_now writes again once there is room."""
    q: Any = multiprocessing.get_context("spawn").Queue(maxsize=1)
    try:
        assert put_now(q, "first")
        outcome: list[BaseException | bool] = []

        def second() -> None:
            try:
                outcome.append(put_now(q, "second", timeout=0.2))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        thread.join(30.0)
        assert not thread.is_alive(), "put_now blocked on the full queue"
        assert len(outcome) == 1 and isinstance(outcome[0], queue.Full)
        assert "stayed full for 0.2 s" in str(outcome[0])
        assert q.get(timeout=10.0) == "first"
        assert put_now(q, "third", timeout=0.2)
        assert q.get(timeout=10.0) == "third"
        assert 0 < PUT_TIMEOUT < float("inf")
    finally:
        q.cancel_join_thread()
        q.close()


def test_queue_access_the_relay_grows_request_qs_pipe() -> None:
    """Steps: a RequestWriter (what the relay writes request_q with) over a spawn-context
    multiprocessing.Queue. Expected: the queue's pipe grown to 1 MiB where the system allows it
    (from the default 64 KiB: a large request then crosses it in 16 fills rather than 256), and a
    request written through it read back as it was."""
    q: Any = multiprocessing.get_context("spawn").Queue()
    try:
        before = pipe_size(q._writer.fileno())
        writer = RequestWriter(q, 5.0)
        with open("/proc/sys/fs/pipe-max-size") as limit:
            allowed = int(limit.read()) >= PIPE_SIZE
        assert pipe_size(q._writer.fileno()) == (PIPE_SIZE if allowed else before)
        # Written from a thread, as the relay does: a write larger than the pipe waits for the read.
        thread = threading.Thread(target=writer.put, args=(b"x" * (3 << 20), None), daemon=True)
        thread.start()
        assert q.get(timeout=10) == b"x" * (3 << 20)
        thread.join(10)
    finally:
        q.close()
        q.join_thread()
