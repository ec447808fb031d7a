"""The main-process side of the channel: the only reader of the user's ``response_q`` and the
only writer of the user's ``request_q``.

Why a relay: a process killed inside ``Queue.get()`` keeps the queue's read lock forever, and one
killed inside a write can leave half a message (DESIGN.md "Traps"). So HTTP children never touch
the user's queues; they talk to this relay over pipes of their own, and the relay, living in the
main process, is the one reader that routes every reply to the endpoint whose request has that id.
One thread blocks on ``response_q.get()``: no polling, and a burst of replies is drained and handed
to each endpoint in one batch (at most ``_BATCH_WINDOW`` after its first reply was read, so the
first token of a fast stream is not held back until the whole burst is read).

Proof of life: the main loop takes requests while it reads ``request_q``: ``facts()["unread"]``
and ``["unread_age"]`` say how many of the messages put here wait unread, and since when the
oldest; ``["read_quiet_age"]`` for how long surely nothing was read (``unread_watch.py``; None for
a queue that can't count). Replies show it too: any reply
(``facts()["last_reply_age"]``), and a ``Heartbeat`` (dropped here, not counted as a stray reply).
A request that timed out with no reply at all since it was forwarded marks the main loop
*unanswering* (``facts()["unanswered_age"]``) until the next reply or beat.

A message on ``response_q`` may also be a ``list`` of replies (``ReplyBatcher`` sends them so):
each is routed as if it had come alone, and when all go to the same endpoint the message's bytes
are forwarded as they are, one frame for the lot.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from isolated_api.main import request_handoff
from isolated_api.main.local_put import LocalPut, give_back_put, take_over_put
from isolated_api.main.queue_access import ReplyReader, RequestWriter
from isolated_api.main.queue_readers import claim, release
from isolated_api.main.unread_watch import UnreadWatch
from isolated_api.shared.codecs import Codec
from isolated_api.shared.errors import ChannelClosedError, DuplicateRequestIdError, OverloadedError, QueueFullError
from isolated_api.shared.heartbeat import Heartbeat
from isolated_api.shared.messages import CancelRequest, ErrorReply

logger = logging.getLogger("isolated_api.relay")

_MISSING = object()
_BATCH_LIMIT = 512
_BATCH_WINDOW = 0.0002  # seconds
# How many requests in flight in a dead worker are named in the log line that reports it.
_LOGGED_IN_FLIGHT = 20


class Endpoint(Protocol):
    """Where replies for some requests go: a channel in this process, or an HTTP child."""

    name: str

    def deliver(self, replies: list[Any], raws: list[bytes | None]) -> None:
        """Called on the relay's reader thread, outside its lock. ``raws[i]`` is ``replies[i]``
        as the main process pickled it, when known: forwarding those bytes saves pickling again.
        An entry that is a ``list`` is a bundle: replies that came in one message, all for this
        endpoint, in order (``flatten`` turns the entries into plain replies)."""


def flatten(replies: list[Any]) -> list[Any]:
    """The replies of ``Endpoint.deliver``'s entries, bundles opened, in order."""
    if not any(type(reply) is list for reply in replies):
        return replies
    flat: list[Any] = []
    for reply in replies:
        if type(reply) is list:
            flat.extend(reply)
        else:
            flat.append(reply)
    return flat


@dataclass(slots=True)
class _Route:
    endpoint: Endpoint
    streaming: bool
    created: float
    origin: str = ""  # "METHOD /path" of the HTTP request, when the worker sent it
    started: bool = False  # a stream's first chunk was routed


@dataclass(frozen=True, slots=True)
class _Overload:
    """How a request over the server-wide ``max_pending`` is refused."""

    status: int
    retry_after: int


@dataclass(frozen=True)
class _StopReader:
    token: str


class Relay:
    def __init__(
        self,
        request_q: Any,
        response_q: Any,
        *,
        queue_timeout: float,
        max_pending: int | None = None,
        overload_status: int = 503,
        retry_after: int = 1,
        cancel_notices: bool = False,
        observe_round_trip: Callable[[float], None] | None = None,
        codec: Codec | None = None,
        add_collector: Callable[[Any], None] | None = None,
    ) -> None:
        self._request_q = request_q
        # Registers a Prometheus collector on the server's /metrics (None: no metrics): how an
        # Engine in this process, which finds this relay on its response_q (queue_readers.py),
        # shows its own.
        self.add_collector = add_collector
        self._response_q = response_q
        self._queue_timeout = queue_timeout
        # With several HTTP workers each admits up to max_pending on its own; this bound makes
        # the limit exact for the whole server.
        self._max_pending = max_pending
        self._overload = _Overload(overload_status, retry_after)
        # Opt-in: a CancelRequest on request_q would surprise a main loop that doesn't expect it.
        self._cancel_notices = cancel_notices
        self._last_reply_at = time.monotonic()
        # When the oldest request that timed out with no reply at all since it was forwarded was
        # forwarded; None once a reply or a Heartbeat came after it.
        self._unanswered_since: float | None = None
        self.beats = 0
        self.cancel_notices_sent = 0
        # Replies handed over in this process (route_local), never on response_q.
        self.local_replies = 0
        self._local_put: LocalPut | None = None
        self.queue_full = 0
        self.stream_chunks = 0
        self._observe_round_trip = observe_round_trip
        self._codec = codec
        self._writer = RequestWriter(request_q, queue_timeout, codec)
        self._unread = UnreadWatch(request_q)
        self._lock = threading.Lock()
        self._routes: dict[Hashable, _Route] = {}
        self._reader: threading.Thread | None = None
        self._token = ""
        self._closed = True
        # Requests put on request_q so far.
        self.forwarded_count = 0
        # Replies read from response_q (or handed over) that matched no waiting request: late,
        # unknown, no id, or unreadable.
        self.dropped_count = 0
        # Requests refused by the server-wide max_pending bound.
        self.rejected_count = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the reply reader; idempotent."""
        with self._lock:
            if self._reader is not None:
                return
            # Leaves this relay's handle on the queue object: a ReplyBatcher or an Engine in this
            # process finds it there (queue_readers.py).
            claim(self._response_q, self)
            # Large requests wait in this process for the main loop (request_handoff.py).
            request_handoff.relay_started()
            self._closed = False
            self._token = uuid.uuid4().hex
            self._reader = threading.Thread(target=self._read_replies, name="isolated-api-relay", daemon=True)
            self._reader.start()
            # Replies this process puts skip the queue (local_put.py); other processes' still
            # come through it, read by the thread above.
            self._local_put = take_over_put(self._response_q, self, self._codec)

    def close(self, timeout: float = 2.0) -> None:
        """Stops the reader and forgets every route. Safe to call twice."""
        with self._lock:
            reader, self._reader = self._reader, None
            self._closed = True
            self._routes.clear()
        if reader is None:
            return
        # The queue's own put first: the sentinel, and any later put, must go through the queue.
        give_back_put(self._response_q, self._local_put)
        self._local_put = None
        # The reader is blocked in get(); a sentinel only it recognises wakes it.
        try:
            self._response_q.put(_StopReader(self._token))
        except (ValueError, OSError):
            pass
        reader.join(timeout)
        release(self._response_q, self)
        request_handoff.relay_stopped()

    @property
    def takes_local_puts(self) -> bool:
        """True while ``response_q.put`` in this process hands replies over (local_put.py)."""
        return self._local_put is not None

    @property
    def response_q(self) -> Any:
        return self._response_q

    @property
    def max_pending(self) -> int | None:
        """The server-wide bound on requests awaiting replies (every HTTP worker's together)."""
        return self._max_pending

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def is_running(self) -> bool:
        return self._reader is not None

    @property
    def pending_count(self) -> int:
        """Requests forwarded to the main process and still awaiting their (final) reply: what the
        whole server awaits from it."""
        return len(self._routes)

    # -- requests (any thread) ---------------------------------------------------------------

    def forward(
        self,
        endpoint: Endpoint,
        request_id: Hashable,
        *,
        request: Any = None,
        payload: bytes | memoryview | None = None,
        streaming: bool = False,
        origin: str = "",
    ) -> None:
        """Routes replies for ``request_id`` to ``endpoint``, then puts the request on
        ``request_q``. The route exists before the put, so no reply can outrun it. ``origin``
        ("POST /upper") is logged if the endpoint dies with the request in flight."""
        with self._lock:
            if self._closed:
                raise ChannelClosedError("the server is not running")
            if request_id in self._routes:
                raise DuplicateRequestIdError(f"request id {request_id!r} is already awaiting a reply")
            if self._max_pending is not None and len(self._routes) >= self._max_pending:
                self.rejected_count += 1
                raise OverloadedError(
                    f"server busy: {self._max_pending} requests already awaiting replies",
                    retry_after=self._overload.retry_after,
                    status_code=self._overload.status,
                )
            self._routes[request_id] = _Route(endpoint, streaming, time.monotonic(), origin)
        try:
            self._put(request, payload)
        except queue.Full:
            self.queue_full += 1
            self._forget(request_id, endpoint)
            raise QueueFullError(
                f"the main process's request queue stayed full for {self._queue_timeout:g} s"
            ) from None
        except (ValueError, OSError) as exc:  # the queue was closed
            self._forget(request_id, endpoint)
            raise ChannelClosedError(f"the request queue is closed: {exc}") from None
        self.forwarded_count += 1

    def _put(self, request: Any, payload: bytes | memoryview | None) -> None:
        # Every message this relay puts on request_q is noted, so readiness can tell whether the
        # main process reads them (unread_watch.py).
        self._unread.starting()
        try:
            self._writer.put(request, payload)
        except BaseException:
            self._unread.failed()
            raise
        self._unread.done()

    def abandon(self, endpoint: Endpoint, request_id: Hashable, reason: str = "cancelled") -> bool:
        """The endpoint gave up on ``request_id`` (timeout, client gone). Later replies are dropped."""
        route = self._forget(request_id, endpoint)
        if route is None:
            return False
        if reason == "timeout":
            with self._lock:
                # Nothing at all came back while it waited: the main loop is not taking requests.
                if self._last_reply_at < route.created and self._unanswered_since is None:
                    self._unanswered_since = route.created
        self._notify_cancelled([request_id], reason)
        return True

    def detach(self, endpoint: Endpoint, reason: str = "worker_died") -> list[Hashable]:
        """Forgets every route of ``endpoint`` (it closed or died) and returns their ids."""
        with self._lock:
            routes = [(rid, route) for rid, route in self._routes.items() if route.endpoint is endpoint]
            for rid, _ in routes:
                del self._routes[rid]
        ids = [rid for rid, _ in routes]
        if routes and reason == "worker_died":
            shown = routes[:_LOGGED_IN_FLIGHT]
            named = ", ".join(f"{rid!r} ({route.origin or 'origin unknown'})" for rid, route in shown)
            more = len(routes) - _LOGGED_IN_FLIGHT
            logger.warning(
                "%s ended with %d request(s) in flight: %s%s",
                endpoint.name,
                len(routes),
                named,
                f" and {more} more" if more > 0 else "",
            )
        self._notify_cancelled(ids, reason)
        return ids

    def _notify_cancelled(self, ids: list[Hashable], reason: str) -> None:
        if not self._cancel_notices or self._closed:
            return
        for request_id in ids:
            try:
                self._put(CancelRequest(request_id, reason), None)
                self.cancel_notices_sent += 1
            except (queue.Full, ValueError, OSError):
                logger.warning("could not tell the main process that request %r was cancelled", request_id)

    def facts(self) -> dict[str, Any]:
        """The main side's view for health checks: what is pending and how fresh replies are."""
        now = time.monotonic()
        with self._lock:
            oldest = min((route.created for route in self._routes.values()), default=None)
            pending = len(self._routes)
            unanswered = self._unanswered_since
        unread = self._unread.unread()
        return {
            "pending": pending,
            "oldest_pending_age": 0.0 if oldest is None else now - oldest,
            "last_reply_age": now - self._last_reply_at,
            "unanswered_age": 0.0 if unanswered is None else now - unanswered,
            # None when request_q can't count what it holds (readiness then judges replies).
            "unread": None if unread is None else unread.count,
            "unread_age": None if unread is None else unread.oldest_age,
            "read_quiet_age": None if unread is None else unread.quiet_age,
            "beats": self.beats,
            "forwarded": self.forwarded_count,
            "dropped": self.dropped_count,
            "rejected": self.rejected_count,
            "queue_full": self.queue_full,
            "stream_chunks": self.stream_chunks,
            "cancel_notices": self.cancel_notices_sent,
        }

    def _forget(self, request_id: Hashable, endpoint: Endpoint) -> _Route | None:
        with self._lock:
            try:
                route = self._routes.get(request_id)
            except TypeError:  # unhashable id
                return None
            if route is None or route.endpoint is not endpoint:
                return None
            del self._routes[request_id]
            return route

    def answers_everything(self, replies: list[Any]) -> bool:
        """True when ``replies`` end every request the server still awaits (each a reply to a
        unary request, one per request): nothing else is coming that they could share a write
        with. Read without the lock: the answer only decides how soon a batcher writes."""
        routes = self._routes
        if len(routes) > len(replies):
            return False
        answered: set[int] = set()
        for reply in replies:
            try:
                route = routes.get(getattr(reply, "id", _MISSING))
            except TypeError:  # an unhashable id: routed (and dropped) as usual, not decided here
                return False
            if route is None or route.streaming:
                return False
            answered.add(id(route))
        return len(answered) >= len(routes)

    def starts_a_stream(self, replies: list[Any]) -> bool:
        """True when one of ``replies`` is the first chunk of a stream: its client waits for it
        (time to first token), so it is worth a write of its own rather than a wait for company.
        Read without the lock, as ``answers_everything``."""
        routes = self._routes
        for reply in replies:
            try:
                route = routes.get(getattr(reply, "id", _MISSING))
            except TypeError:
                continue
            if route is not None and route.streaming and not route.started:
                return True
        return False

    def route_local(self, replies: list[Any]) -> None:
        """Routes replies made in this process as if they had been read from ``response_q`` (one
        bundle: forwarded to a worker in one frame when they all belong to it), on the caller's
        thread. What a ``ReplyBatcher`` does when this relay reads its queue: no pickle, pipe
        write, wake-up and unpickle on the way through ``response_q``."""
        self.local_replies += len(replies)
        self._route_batch([(replies, None)], "")

    # -- replies (reader thread) -------------------------------------------------------------

    def _read_replies(self) -> None:
        reader = ReplyReader(self._response_q, self._codec)
        token = self._token
        while True:
            try:
                batch = [reader.get()]
            except (ValueError, OSError, EOFError) as exc:
                logger.error("response queue unusable, reply reader stops: %r", exc)
                return
            except Exception:
                # A reply the main process could pickle but we cannot unpickle: we can't know its
                # id, so its waiter will time out. Keep serving the others.
                logger.exception("a reply could not be read from response_q")
                self.dropped_count += 1
                continue
            # Drain what is already queued: one wake-up per endpoint for a burst of replies.
            window_ends = time.perf_counter() + _BATCH_WINDOW
            try:
                while len(batch) < _BATCH_LIMIT and time.perf_counter() < window_ends:
                    batch.append(reader.get_nowait())
            except queue.Empty:
                pass
            except Exception:
                logger.exception("a reply could not be read from response_q")
                self.dropped_count += 1
            if self._route_batch(batch, token):
                return

    def _route_batch(self, batch: list[tuple[Any, bytes | None]], token: str) -> bool:
        stop = False
        ended: list[float] = []
        by_endpoint: dict[int, tuple[Endpoint, list[Any], list[bytes | None]]] = {}

        def add(endpoint: Endpoint, reply: Any, raw: bytes | None) -> None:
            entry = by_endpoint.get(id(endpoint))
            if entry is None:
                by_endpoint[id(endpoint)] = (endpoint, [reply], [raw])
            else:
                entry[1].append(reply)
                entry[2].append(raw)

        with self._lock:
            self._last_reply_at = time.monotonic()
            self._unanswered_since = None
            for reply, raw in batch:
                if type(reply) is list and len(reply) == 1 and raw is None:
                    # A bundle of one with no bytes to forward (a batcher's lone reply): sent as a
                    # plain reply, whose frame carries its id as text rather than pickled.
                    reply = reply[0]
                if type(reply) is list:
                    targets = [self._claim(member, ended) for member in reply]
                    first = targets[0] if targets else None
                    if first is not None and all(target is first for target in targets):
                        add(first, reply, raw)  # the whole bundle, as it was pickled
                    else:
                        for member, target in zip(reply, targets, strict=True):
                            if target is not None:
                                add(target, member, None)
                    continue
                if type(reply) is _StopReader:
                    stop = stop or reply.token == token
                    continue
                if type(reply) is Heartbeat:
                    self.beats += 1
                    continue
                endpoint = self._claim(reply, ended)
                if endpoint is not None:
                    add(endpoint, reply, raw)
        for endpoint, replies, raws in by_endpoint.values():
            try:
                endpoint.deliver(replies, raws)
            except Exception:
                logger.exception("delivering %d replies to %s failed", len(replies), endpoint.name)
        # After the replies are written: the metric neither delays them nor holds
        # the lock that forward() needs.
        observe = self._observe_round_trip
        if observe is not None:
            for seconds in ended:
                observe(seconds)
        return stop

    def _claim(self, reply: Any, ended: list[float]) -> Endpoint | None:
        """The endpoint ``reply`` goes to (None: dropped and counted); a final reply ends its
        route, and its round trip is added to ``ended``. Called with the lock held."""
        request_id = getattr(reply, "id", _MISSING)
        try:
            route = self._routes.get(request_id)
        except TypeError:  # unhashable id
            route = None
        if route is None:
            self.dropped_count += 1
            logger.debug("dropped a reply for unknown or abandoned id %r", request_id)
            return None
        if route.streaming:
            self.stream_chunks += 1
            route.started = True
        if not route.streaming or getattr(reply, "is_final", False) or type(reply) is ErrorReply:
            del self._routes[request_id]
            if self._observe_round_trip is not None:
                ended.append(self._last_reply_at - route.created)
        return route.endpoint
