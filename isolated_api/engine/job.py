"""One request inside the engine. Every message for it goes through ``send``, guarded by a lock,
so the request ends exactly once: after its final message, a ``CancelRequest`` or a stop, nothing
more is sent for it, whichever thread (loop or worker) tries."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Hashable
from typing import Any

from isolated_api.engine.context import RequestContext
from isolated_api.main.queue_access import put_now
from isolated_api.main.reply_batcher import ReplyBatcher
from isolated_api.shared.messages import ErrorReply, internal_error

logger = logging.getLogger("isolated_api.engine")

# How a message becomes what goes on response_q: None puts it as it is (the queue pickles it);
# with a binary codec, its bytes.
Encode = Callable[[Any], Any] | None


class ReplySink:
    """Where every engine message goes. With the queue pickling (no binary codec) a
    ``ReplyBatcher``: a lone reply is written at once from the calling thread, and the chunks of
    busy streams leave several to a message. With a binary codec each message is encoded here and
    written as its own bytes (the relay expects one encoded message per queue item)."""

    def __init__(self, response_q: Any, encode: Encode = None) -> None:
        self._response_q = response_q
        self._encode = encode
        self._batcher = ReplyBatcher(response_q) if encode is None else None

    def put(self, message: Any) -> bool:
        """Puts ``message``; False when it could not be encoded and an ``ErrorReply`` (500) saying
        so went out in its place, failing that one request."""
        if self._batcher is not None:
            try:
                self._batcher.put(message)
            except ValueError as exc:  # closed: the engine has stopped
                logger.error("could not put a reply for %r: %s", getattr(message, "id", None), exc)
            return True
        return put(self._response_q, message, self._encode)

    def put_many(self, messages: list[Any]) -> set[Any]:
        """Puts ``messages`` as ONE message on response_q (a list, which the relay routes member by
        member): a batch's replies, or a step's chunks. Returns the ids of messages that could not
        be encoded (each failed alone with an ``ErrorReply`` 500 in its place)."""
        if not messages:
            return set()
        if self._batcher is not None:
            try:
                self._batcher.put_bundle(messages)
            except ValueError as exc:  # closed: the engine has stopped
                logger.error("could not put %d replies: %s", len(messages), exc)
            return set()
        if len(messages) > 1 and self._encode is not None:
            try:
                item = self._encode(messages)
            except Exception:
                pass  # one member can't be encoded: each goes alone below, the bad one failing alone
            else:
                _write(self._response_q, item, len(messages))
                return set()
        return {getattr(m, "id", None) for m in messages if not put(self._response_q, m, self._encode)}

    def close(self) -> None:
        """Writes what is still waiting (replies of requests that just ended)."""
        if self._batcher is not None:
            self._batcher.close()


class Job:
    __slots__ = (
        "_closed",
        "_lock",
        "_sink",
        "arrived",
        "context",
        "cost",
        "group",
        "id",
        "in_thread",
        "outcome",
        "request",
        "task",
    )

    def __init__(self, request_id: Hashable, request: Any, sink: ReplySink) -> None:
        self.id = request_id
        self.request = request
        # Served by a batcher or a stepper (``engine.batch`` / ``engine.steps``): told when the job
        # is cancelled, so a queued member leaves its queue at once.
        self.group: Any = None
        self.arrived = 0.0  # loop time when a group took it (max_wait counts from the first)
        self.cost = 0.0  # its share of a batch's max_cost
        self.outcome: str | None = None  # how a stepper's stream ended: "done" or "error"
        self.context = RequestContext(request_id)
        self.task: asyncio.Task[None] | None = None
        # True while sync code runs in a worker thread for it: then cancelling the task would free
        # the concurrency slot while the thread still works, so only the context flag is set.
        self.in_thread = False
        self._sink = sink
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, message: Any, *, final: bool) -> bool:
        """Puts ``message`` on response_q unless the job already ended; ``final`` ends it."""
        with self._lock:
            if self._closed:
                return False
            if final:
                self._closed = True
            if not self._sink.put(message):
                self._closed = True  # it went out as an ErrorReply: the request is over
                return False
            return True

    def reserve(self, final: bool) -> bool:
        """For a message sent with others (``send_all``): True if it may still go out; ``final``
        ends the job here, before the message is written."""
        with self._lock:
            if self._closed:
                return False
            if final:
                self._closed = True
            return True

    def end(self, outcome: str) -> None:
        """Ends the job without a message of its own (its message failed and was replaced)."""
        with self._lock:
            self._closed = True
        self.outcome = outcome

    def cancel(self, reason: str, last_word: Any = None) -> bool:
        """Ends the job: sends ``last_word`` (if any) instead of whatever the handler would still
        produce, and tells the handler to stop. Returns False if the job had already ended."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            if last_word is not None:
                self._sink.put(last_word)
        self.context.cancel(reason)
        if self.task is not None and not self.in_thread:
            self.task.cancel()
        return True


def send_all(sink: ReplySink, outgoing: list[tuple[Job, Any, bool]]) -> list[Job]:
    """Sends ``(job, message, final)`` for each job, all in ONE message on response_q; a job that
    already ended (cancelled meanwhile) is skipped, and ``final`` ends a job. A job whose message
    could not be encoded is ended too (it was failed with a 500 in its place). Returns the jobs
    whose message went out."""
    messages: list[Any] = []
    sent: list[Job] = []
    for job, message, final in outgoing:
        if job.reserve(final):
            messages.append(message)
            sent.append(job)
    # Unlike Job.send, written outside the jobs' locks (one write for many jobs): a cancel's last
    # word may then go out before a chunk of the same job, which the relay drops as it ended.
    failed = sink.put_many(messages)
    if failed:
        for job in sent:
            if job.id in failed:
                job.end("error")
        sent = [job for job in sent if job.id not in failed]
    return sent


def _write(response_q: Any, item: Any, count: int) -> None:
    try:
        if not put_now(response_q, item):
            response_q.put(item)
    except (ValueError, OSError, queue.Full) as exc:  # closed or full for good: nothing else to do
        logger.error("could not put %d replies on response_q: %r", count, exc)


def put(response_q: Any, message: Any, encode: Encode = None) -> bool:
    """Puts ``message``; False when it could not be encoded and an ``ErrorReply`` (500, with an
    error id; the codec's error logged here under it) went out in its place, failing that one request."""
    item = message
    if encode is not None:
        try:
            item = encode(message)
        except Exception as exc:
            request_id = getattr(message, "id", None)
            if type(message) is ErrorReply:
                logger.error("could not encode an ErrorReply for %r: %s", request_id, exc)
                return False
            failure, error_id = internal_error(request_id)
            logger.error(
                "could not encode a %s for %r (error id %s): %s", type(message).__name__, request_id, error_id, exc
            )
            put(response_q, failure, encode)
            return False
    try:
        # Written from this thread (no feeder-thread hop per chunk) when response_q allows it.
        if not put_now(response_q, item):
            response_q.put(item)
    except (ValueError, OSError, queue.Full) as exc:  # closed or full for good: nothing else to do
        logger.error("could not put a reply for %r on response_q: %r", getattr(message, "id", None), exc)
    return True
