"""The relay reading a response queue is found on the queue object itself (queue_readers.py): one
reader per queue, found only while it runs, and never carried along when the queue is pickled."""

from __future__ import annotations

import pickle
import queue
from typing import Any

import pytest

from isolated_api.main.queue_readers import relay_reading
from isolated_api.main.relay import Relay


class _DictPickledQueue(queue.Queue[Any]):
    """A user's queue whose pickle carries its instance attributes (the default for a plain class):
    what it carries must not drag the relay, its locks and threads along."""

    def __getstate__(self) -> dict[str, Any]:
        # Every attribute added to it (the stdlib queue's own locks can't be pickled).
        own = set(vars(queue.Queue()))
        return {name: value for name, value in vars(self).items() if name not in own}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__init__()
        vars(self).update(state)


def test_queue_readers_one_relay_reads_a_queue_and_is_found_on_it_while_it_runs(queues: Any) -> None:
    """Steps: start a relay on response_q, start a second on the same queue, close the first,
    start the second. Expected: the queue names the first while it runs, the second is refused
    with a message that says why, and reads the queue once the first stopped."""
    rq, sq = queues
    first, second = Relay(rq, sq, queue_timeout=1), Relay(rq, sq, queue_timeout=1)
    assert relay_reading(sq) is None
    first.start()
    try:
        assert relay_reading(sq) is first
        with pytest.raises(RuntimeError, match="already read by another running server"):
            second.start()
    finally:
        first.close()
    assert relay_reading(sq) is None
    second.start()
    try:
        assert relay_reading(sq) is second
    finally:
        second.close()
    assert relay_reading(sq) is None


def test_queue_readers_a_pickled_queue_arrives_without_its_reader() -> None:
    """Steps: start a relay on a queue whose pickle copies its attributes, pickle the queue.
    Expected: the pickle succeeds, and the copy names no reader (the relay stays in its process)."""
    sq: _DictPickledQueue = _DictPickledQueue()
    sq.tag = "mine"  # type: ignore[attr-defined]
    relay = Relay(queue.Queue(), sq, queue_timeout=1)
    relay.start()
    try:
        copy = pickle.loads(pickle.dumps(sq))
        assert copy.tag == "mine" and relay_reading(copy) is None
        assert relay_reading(sq) is relay
    finally:
        relay.close()
