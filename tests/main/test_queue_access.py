"""``put_now`` (queue_access.py) writes into a ``multiprocessing.Queue`` from the caller's thread; a
bounded queue that nobody empties must not hold that thread (the main loop's) for ever."""

from __future__ import annotations

import multiprocessing
import queue
import threading
from typing import Any

from isolated_api.main.queue_access import PUT_TIMEOUT, put_now


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
