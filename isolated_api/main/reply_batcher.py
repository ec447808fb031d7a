"""``ReplyBatcher``: ``response_q.put`` for a main loop that replies fast (token streams, many
requests in flight).

Why: every message on a ``multiprocessing.Queue`` costs a pickle, a feeder-thread hand-off, a
pipe write, and on the relay's side a read and an unpickle; with one message per token the main
process, whose threads share one GIL, spends more on messages than on tokens. The relay accepts a
``list`` of replies as one message (each routed as if it came alone), so this class does what
the queue's feeder thread does, except that it writes everything waiting as one message: while a
write is in progress new replies collect, and the next write takes them all. A reply that comes
after a quiet millisecond, that answers the last request the server awaits, or that is the first
chunk of a stream, is written by the caller's own thread at once (no hand-off);
under load, messages grow instead of queueing up. When the relay reading ``response_q`` runs in
this process (the server was started here), "written" means handed to it: ``Relay.route_local``
routes the replies and writes them to the worker's pipe from the writing thread, and the queue
is not used at all.

Order is kept: one write token, replies in ``put`` order. Nothing is lost: ``close()`` writes
what is waiting before it returns, and a reply that can't be pickled fails its own request (an
``ErrorReply`` 500 in its place, "internal error (error id ...)", the pickling error logged here
under that id) without taking the rest of its batch with it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from isolated_api.main.queue_access import put_now
from isolated_api.main.queue_readers import relay_reading
from isolated_api.shared.messages import ErrorReply, internal_error

if TYPE_CHECKING:
    from isolated_api.main.relay import Relay

logger = logging.getLogger("isolated_api.reply_batcher")

Encode = Callable[[Any], Any]

# A reply that comes after this long without a write goes out from the caller's thread at once;
# so does one that answers everything the server's relay (in this process) still awaits, since
# nothing else could share its write: a server answering one request at a time puts about once
# per round trip, and by the clock alone those replies took a writer-thread wake-up each, which
# showed at the one-connection p50 (docs/performance.md, "Figures behind the code"). And so does
# the first chunk of a stream, whose client is waiting for it: behind a writer-thread wake-up it
# waited for the GIL while the loop that put it went on putting the stream's other tokens.
_QUIET = 0.001  # seconds


class ReplyBatcher:
    """Puts replies on ``response_q`` from one writer thread, several per message under load.

    ``encode`` (optional) turns a message (a reply, or a list of them) into what goes on the
    queue: ``server.codec.encode`` when the server uses ``MsgspecCodec``. ``max_batch`` bounds
    the replies per message."""

    def __init__(self, response_q: Any, *, encode: Encode | None = None, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._q = response_q
        self._encode = encode
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: list[Any] = []
        self._writing = False
        self._last_write = 0.0
        self._yield_next = False
        self._through_queue = True  # how the last message went: through response_q, or handed over
        self._closed = False
        self._flushing = 0  # callers waiting in flush()
        self._thread: threading.Thread | None = None
        self.messages = 0
        self.replies = 0
        self.failed = 0
        self.direct_writes = 0  # messages written by the caller's thread at once
        self.writer_wakeups = 0  # times the writer thread woke up

    def put(self, reply: Any) -> None:
        """Queues ``reply`` (it must have the ``.id`` of its request); returns at once."""
        self._put([reply])

    def put_many(self, replies: Iterable[Any]) -> None:
        """Queues several replies in order (for example one token for each stream of a batch)."""
        self._put(list(replies))  # a copy: the caller may reuse its list

    def put_bundle(self, replies: list[Any]) -> None:
        """Queues several replies that must leave in ONE message (a model step's chunks, a batch's
        results): never split between two writes, though other replies waiting may share it."""
        if len(replies) == 1:
            self._put(list(replies))
        elif replies:
            self._put([list(replies)])  # one pending entry: the writer never cuts through it

    def _put(self, batch: list[Any]) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("the ReplyBatcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="isolated-api-reply-batcher", daemon=True)
                self._thread.start()
            if not batch:
                return
            relay = None
            direct = not self._pending and not self._writing
            if direct:
                # Looked up once: the write below hands the replies to this relay.
                relay = relay_reading(self._q)
                if time.monotonic() - self._last_write <= _QUIET:
                    flat = _flatten(batch)
                    direct = relay is not None and (relay.answers_everything(flat) or relay.starts_a_stream(flat))
            if direct:
                self._writing = True
                self.direct_writes += 1
            else:
                was_empty = not self._pending
                self._pending.extend(batch)
                if was_empty and not self._writing:
                    self._wake.notify_all()
                yield_now, self._yield_next = self._yield_next, False
        if direct:
            # Nothing was being written lately, or nothing else is awaited: write from this
            # thread, sparing the first reply of a burst (or a lone reply) the hand-off to the
            # writer thread; what follows collects.
            self._write_holding_token(batch, relay)
            # Only a relay reading the queue on another thread needs the GIL to forward it.
            self._yield_next = self._through_queue
        elif yield_now:
            # The second reply of a burst: the relay's reader (a thread of this process) was woken
            # by the first one and waits for the GIL, which a producer in a tight loop would hold
            # for up to the 5 ms switch interval. Let it forward the first reply now.
            time.sleep(0)

    @property
    def waiting(self) -> int:
        """Replies queued but not yet written."""
        return len(self._pending)

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every reply queued so far is written; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            try:
                while self._pending or self._writing:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._wake.wait(remaining)
            finally:
                self._flushing -= 1
        return True

    def close(self, timeout: float | None = 10.0) -> None:
        """Writes what is queued, then stops the writer thread. Safe to call twice."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> ReplyBatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        limit = self._max_batch
        while True:
            with self._lock:
                while self._writing or (not self._pending and not self._closed):
                    self._wake.wait()
                    self.writer_wakeups += 1
                if not self._pending:
                    return  # closed and nothing left
                batch = self._pending[:limit]
                del self._pending[:limit]
                self._writing = True
            self._write_holding_token(batch, relay_reading(self._q))

    def _write_holding_token(self, batch: list[Any], relay: Relay | None) -> None:
        # ``_writing`` is the one write token: whoever holds it writes, so messages leave in order.
        # ``relay``: the server's relay reading the queue in this process, if any (relay_reading).
        try:
            self._write(batch, relay)
        finally:
            with self._lock:
                self._writing = False
                self._last_write = time.monotonic()
                # Only if someone waits for this: the writer thread when replies collected, or
                # flush(). The writer thread always waits on this condition, so an unconditional
                # notify woke it after every write for nothing: at 1 connection, a thread
                # wake-up and a GIL hand-off in the main process per reply (a share of its time
                # that showed: docs/performance.md, "Figures behind the code").
                if self._pending or self._flushing:
                    self._wake.notify_all()

    def _write(self, batch: list[Any], relay: Relay | None) -> None:
        batch = _flatten(batch)  # a bundle (put_bundle) is one pending entry, written as its replies
        message: Any = batch[0] if len(batch) == 1 else batch
        try:
            self._send(message, relay)
        except (ValueError, OSError, queue.Full) as exc:  # the queue is closed: nobody to tell
            logger.error("could not put %d replies on response_q: %r", len(batch), exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc, relay)
            else:
                # One reply that can't be pickled must not sink the others: send them one by one.
                for reply in batch:
                    self._write([reply], relay)
            return
        self.messages += 1
        self.replies += len(batch)

    def _send(self, message: Any, relay: Relay | None) -> None:
        self._through_queue = relay is None
        if relay is not None:
            # The server's relay reads this queue in this very process: hand the replies over
            # (routed and written to the worker from this thread) instead of through the queue.
            relay.route_local(message if type(message) is list else [message])
            return
        item = message if self._encode is None else self._encode(message)
        # Written from this thread: no second feeder-thread hop per message.
        if not put_now(self._q, item):
            self._q.put(item)

    def _fail(self, reply: Any, exc: Exception, relay: Relay | None) -> None:
        # The pickling error names the user's objects ("Can't pickle local object 'MainLoop.run.
        # <locals>.<lambda>'"): it is logged here, and the client gets only the id to find it by.
        self.failed += 1
        request_id = getattr(reply, "id", None)
        if type(reply) is ErrorReply or request_id is None:
            logger.error("a %s for %r could not be sent", type(reply).__name__, request_id, exc_info=exc)
            return
        failure, error_id = internal_error(request_id)
        logger.error(
            "a %s for %r could not be sent (error id %s)", type(reply).__name__, request_id, error_id, exc_info=exc
        )
        try:
            self._send(failure, relay)
        except Exception:
            logger.exception("could not fail request %r either", request_id)


def _flatten(entries: list[Any]) -> list[Any]:
    """Pending entries as replies: a bundle (a list) opened in place."""
    if not any(type(entry) is list for entry in entries):
        return entries
    flat: list[Any] = []
    for entry in entries:
        if type(entry) is list:
            flat.extend(entry)
        else:
            flat.append(entry)
    return flat
