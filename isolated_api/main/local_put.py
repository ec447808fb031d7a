"""``response_q.put`` called in the process whose relay reads that queue: the reply is handed to
the relay directly instead of crossing the queue.

The plain main loop (``request_q.get()`` ... ``response_q.put(reply)``) is what most users write.
Through a ``multiprocessing.Queue`` every reply costs a pickle on the queue's feeder thread, a
pipe write, a wake-up of the relay's reader thread, a read and an unpickle, all under the one GIL
the user's loop also needs; with one message per token that is most of what a stream costs. But
when the relay runs in the same process (the server was started there), nothing needs to cross:
while the relay reads a queue, the queue's ``put`` is replaced, on that one queue object, by a
``LocalPut`` that hands the reply to a ``ReplyBatcher`` of its own, whose relay is this one: a
lone reply is routed and written to the worker's pipe from the caller's thread at once, and
replies that come fast (tokens) are written several to a frame, in ``put`` order.

What stays as it was:
- Puts from other processes (a queue passed to a child) go through the pipe as before: the
  replacement is an attribute of this process's object. A pickled queue carries no instance
  attributes, and a forked child, which does inherit it, is recognised by a fork counter and uses the
  queue's own ``put``.
- Only ``multiprocessing.Queue`` and ``queue.Queue`` themselves are taken over; a subclass may
  have its own ``put`` semantics and keeps them. So does a queue whose ``put`` was already
  replaced by someone else.
- When the relay stops, the queue's own ``put`` is back before the relay's last message (its
  stop sentinel) is put, so later puts land on the queue as before.
- A ``Heartbeat`` is routed at once (it carries no request, so no order to keep); with a binary
  codec, encoded bytes are decoded first, so they share the order of the objects put.
- A loop that bound ``put = response_q.put`` before the server started keeps the queue's own
  ``put`` (the bound method was made before the replacement): look it up after ``start()``, as
  ``response_q.put(reply)`` in the loop does.
"""

from __future__ import annotations

import logging
import multiprocessing.queues
import os
import queue
from typing import Any

from isolated_api.main.queue_access import decode_reply
from isolated_api.main.queue_readers import LocalReader
from isolated_api.main.reply_batcher import ReplyBatcher
from isolated_api.shared.codecs import Codec, CodecError
from isolated_api.shared.heartbeat import Heartbeat

logger = logging.getLogger("isolated_api.relay")

_TAKEN_OVER = (multiprocessing.queues.Queue, queue.Queue)

# Counts forks into this process: a ``LocalPut`` made before the last one belongs to the parent.
# (Checked on every put; ``os.getpid()`` there would be a system call per token.)
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


class LocalPut:
    """Stands in for ``q.put`` while ``relay`` reads ``q`` in this process."""

    def __init__(self, q: Any, relay: LocalReader, codec: Codec | None) -> None:
        self._q = q
        self.relay = relay
        self._codec = codec
        self._forks = _forks
        self._own_put = type(q).put
        # The relay left its handle on q before it took over put (queue_readers.py): the batcher
        # finds it there and hands replies over.
        self.batcher = ReplyBatcher(q)

    def __call__(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        relay = self.relay
        if relay.is_closed or _forks != self._forks:
            self._own_put(self._q, obj, block, timeout)
            return
        if type(obj) is bytes:
            try:
                obj, _ = decode_reply(self._codec, obj)
            except CodecError:
                logger.exception("a reply put on response_q could not be decoded")
                relay.dropped_count += 1
                return
        try:
            if type(obj) is list:
                self.batcher.put_many(obj)
            elif type(obj) is Heartbeat:
                relay.route_local([obj])  # no request, so no order to keep: at once
            else:
                self.batcher.put(obj)
        except ValueError:  # the relay stopped between the check above and now
            self._own_put(self._q, obj, block, timeout)


def take_over_put(q: Any, relay: LocalReader, codec: Codec | None) -> LocalPut | None:
    """Installs a ``LocalPut`` on ``q``; None (and nothing changed) where it does not apply."""
    if type(q) not in _TAKEN_OVER or "put" in vars(q):
        return None
    local = LocalPut(q, relay, codec)
    q.put = local
    return local


def give_back_put(q: Any, local: LocalPut | None) -> None:
    """Puts ``q``'s own ``put`` back, then writes what ``local``'s batcher still holds."""
    if local is None:
        return
    if vars(q).get("put") is local:
        del q.put
    local.batcher.close()
