"""The link from an HTTP worker to remote engines over ZeroMQ (``.subprocess.with_engines``).

One DEALER socket per engine (so a reply is known to come from the engine that was asked, and a
request is never queued for an engine that is not connected: ``IMMEDIATE``), read by the worker's
event loop through the socket's file descriptor: no thread, no polling. The worker still has its
private pipes to its own main process for everything else (ready, metrics, drain): they are the
``control`` link, opened and closed with this one.

Each request goes to the least-loaded ready engine (``EnginePool``), stamped with the boot id of
that engine's current start, and is remembered with its bytes until its final reply, so that:
- an engine's REJECT of a request it never ran ("full", "stale", "closed") sends it once to
  another engine, else the request ends with the engine's answer (503 + Retry-After when full);
- a lost engine (its connection closed, ZMTP heartbeats failed, or no pong for ``ping_timeout``:
  a hung Python) ends exactly the requests that were on it, once, with ``ChannelClosedError``
  (503, or ``event: error`` for a stream already answering), unless ``retry_lost`` lets a unary
  request run again elsewhere;
- a reply from an engine for a request that is no longer on it (late, after its engine was lost)
  is dropped and counted, never handed to another waiter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from isolated_api.shared import control, errors, remote_wire
from isolated_api.shared.codecs import Codec, CodecError
from isolated_api.shared.engines import EnginesConfig, parse_address
from isolated_api.shared.link import Link, LinkSink
from isolated_api.shared.messages import ErrorReply
from isolated_api.shared.readiness import main_loop_problem
from isolated_api.worker.engine_pool import CONNECTING, LEAVING, LOST, READY, STALLED, EnginePool, EngineState
from isolated_api.worker.request_origin import current_origin

logger = logging.getLogger("isolated_api.engines")

_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_MONITORED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED
# Messages read from one engine per loop turn before other work gets its turn.
_BURST = 512


@dataclass(slots=True, eq=False)
class _InFlight:
    id_bytes: bytes
    origin: bytes
    payload: bytes
    streaming: bool
    engine: EngineState | None = None
    retried: bool = False


# What an engine's refusal (``Reject.why``) is on this side; any other is the engine's own answer.
_REJECTED_AS = {
    "full": "OverloadedError",
    "queue_full": "QueueFullError",
    "duplicate": "DuplicateRequestIdError",
    "stale": "ChannelClosedError",
    "closed": "ChannelClosedError",
}


def _rejection(reject: remote_wire.Reject) -> errors.IPCError:
    name = _REJECTED_AS.get(reject.why, "RemoteError")
    if name == "OverloadedError":
        return errors.from_wire(name, reject.message, reject.status, {"Retry-After": str(reject.retry_after)})
    if name == "RemoteError":
        return errors.from_wire(name, reject.message, reject.status)
    return errors.from_wire(name, reject.message)  # the class's own status and headers


def _default_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class EngineLink:
    """A ``Link`` to every engine of ``config``; ``control`` is the worker's pipe link to its own
    main process (opened and closed with this one; None in tests of the link alone)."""

    def __init__(self, config: EnginesConfig, codec: Codec, control_link: Link | None = None) -> None:
        self._config = config
        self._codec = codec
        self._control = control_link
        self.pool = EnginePool()
        self._in_flight: dict[Hashable, _InFlight] = {}
        self._sink: LinkSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._context: zmq.Context[Any] | None = None
        self._curve: tuple[bytes, bytes] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._seq = 0
        self._closed = False
        # Which configured name each resolved address came from (kept if resolving fails later).
        self._names: dict[str, str] = {}
        self.late_replies = 0
        self.bad_messages = 0
        self.retried = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self, sink: LinkSink) -> None:
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        if self._control is not None:
            await self._control.open(sink)
        self._context = zmq.Context()
        if self._config.curve_server_key is not None:
            public, secret = zmq.curve_keypair()
            self._curve = (public, secret)
        await self._resolve()
        self._every(self._config.ping_interval, self._ping_all)
        if any(parse_address(a).is_name for a in self._config.addresses):
            self._every(self._config.resolve_interval, lambda: asyncio.ensure_future(self._resolve()))

    async def close(self) -> None:
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for engine in list(self.pool.engines):
            if engine.sock is not None:
                try:
                    engine.sock.send(remote_wire.BYE, zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            self._close_engine(engine)
        self.pool.engines.clear()
        if self._context is not None:
            self._context.term()
            self._context = None
        if self._control is not None:
            await self._control.close()

    def _every(self, seconds: float, action: Any) -> None:
        loop = self._loop
        assert loop is not None

        def tick() -> None:
            if self._closed:
                return
            try:
                action()
            finally:
                self._timers[:] = [t for t in self._timers if not t.cancelled()]
                self._timers.append(loop.call_later(seconds, tick))

        self._timers.append(loop.call_later(seconds, tick))

    # -- engines coming and going ----------------------------------------------------------

    async def _resolve(self) -> None:
        """Turns the configured addresses into engines: names resolved (again), new addresses
        connected, addresses no name resolves to any more left to finish and close."""
        loop = self._loop
        assert loop is not None
        resolver = self._config.resolver or _default_resolver
        wanted: list[str] = []
        for text in self._config.addresses:
            address = parse_address(text)
            if not address.is_name:
                wanted.append(text)
                continue
            try:
                hosts = await loop.run_in_executor(None, resolver, address.host, address.port)
            except (OSError, ValueError) as exc:
                # Keep what it resolved to before: a DNS hiccup must not drop live engines.
                logger.warning("could not resolve %s: %s", text, exc)
                wanted.extend(e.address for e in self.pool.engines if e.extra.get("name") == text)
                continue
            for host in hosts:
                resolved = address.with_host(host)
                wanted.append(resolved)
                self._names[resolved] = text
        if self._closed:
            return
        for address_text in dict.fromkeys(wanted):
            engine = self.pool.by_address(address_text)
            if engine is None:
                self._add_engine(address_text)
            elif engine.state == LEAVING:
                engine.state = CONNECTING
        for engine in list(self.pool.engines):
            if engine.address not in wanted and engine.state != LEAVING:
                logger.info("engine %s left (its name no longer resolves to it)", engine.address)
                engine.state = LEAVING
                self._close_if_left(engine)

    def _add_engine(self, address: str) -> None:
        context, loop = self._context, self._loop
        assert context is not None and loop is not None
        config = self._config
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, int(config.heartbeat_interval * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(config.heartbeat_timeout * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TTL, int(config.heartbeat_timeout * 1000))
        if self._curve is not None and config.curve_server_key is not None:
            public, secret = self._curve
            sock.setsockopt(zmq.CURVE_SERVERKEY, config.curve_server_key.encode())
            sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        monitor = sock.get_monitor_socket(_MONITORED)
        engine = EngineState(address)
        engine.extra["name"] = self._names.get(address)
        engine.sock, engine.monitor = sock, monitor
        self.pool.engines.append(engine)
        sock.connect(address)
        loop.add_reader(sock.getsockopt(zmq.FD), self._readable, engine)
        loop.add_reader(monitor.getsockopt(zmq.FD), self._monitor_readable, engine)
        # A ZeroMQ descriptor signals a new message only once a read has found its socket empty:
        # read each socket once now, or the first event and the first pong would go unnoticed.
        self._monitor_readable(engine)
        self._readable(engine)
        self._ping(engine)

    def _close_engine(self, engine: EngineState) -> None:
        loop = self._loop
        for sock in (engine.monitor, engine.sock):
            if sock is None:
                continue
            if loop is not None and not loop.is_closed():
                loop.remove_reader(sock.getsockopt(zmq.FD))
        if engine.sock is not None:
            try:
                engine.sock.disable_monitor()
            except zmq.ZMQError:
                pass
        for sock in (engine.monitor, engine.sock):
            if sock is not None:
                sock.close(0)
        engine.sock = engine.monitor = None

    def _close_if_left(self, engine: EngineState) -> None:
        if engine.state == LEAVING and engine.in_flight == 0:
            self._close_engine(engine)
            self.pool.engines.remove(engine)

    def _lose(self, engine: EngineState, why: str) -> None:
        """The engine is gone or hung: every request on it ends now, once."""
        if engine.state in (LOST, LEAVING) and engine.in_flight == 0:
            engine.problem = why
            return
        was = engine.state
        engine.state = LOST if was != LEAVING else LEAVING
        engine.problem = why
        engine.lost_count += 1
        ended = [(rid, entry) for rid, entry in self._in_flight.items() if entry.engine is engine]
        engine.in_flight = 0
        logger.warning("engine %s lost (%s); %d request(s) on it end", engine.address, why, len(ended))
        sink = self._sink
        for request_id, entry in ended:
            del self._in_flight[request_id]
            entry.engine = None
            if self._config.retry_lost and not entry.streaming and not entry.retried:
                entry.retried = True
                try:
                    self._dispatch(request_id, entry, exclude={id(engine)})
                    self.retried += 1
                    continue
                except errors.IPCError:
                    pass
            if engine.sock is not None:
                # If it is only hung, let it drop the work when it wakes.
                cancel = control.encode_cancel(request_id, "timeout", self._codec.encode_id)
                self._send(engine, [remote_wire.CANCEL, cancel])
            if sink is not None:
                sink.on_failure(
                    request_id,
                    errors.ChannelClosedError(f"the engine at {engine.address} was lost ({why}) while serving it"),
                )
        self._close_if_left(engine)

    # -- Link ------------------------------------------------------------------------------

    def send(self, request_id: Hashable, request: Any, *, streaming: bool) -> None:
        if self._closed or self._context is None:
            raise errors.ChannelClosedError("the link to the engines is closed")
        codec = self._codec
        entry = _InFlight(codec.encode_id(request_id), current_origin(), codec.encode(request), streaming)
        self._dispatch(request_id, entry)

    def _dispatch(self, request_id: Hashable, entry: _InFlight, exclude: set[int] | None = None) -> None:
        tried: set[int] = set(exclude or ())
        while True:
            engine = self.pool.choose(tried)
            if engine is None:
                problem = self.pool.problem() or "every ready engine refused the request"
                raise errors.ChannelClosedError(problem)
            parts = remote_wire.encode_request_parts(
                entry.streaming, engine.boot, entry.id_bytes, entry.origin, entry.payload
            )
            size = sum(len(part) for part in parts)
            if size > remote_wire.MAX_MESSAGE:
                # An engine host drops the connection of a peer that sends more, and with it
                # every request of this worker on that engine: refused here instead.
                raise errors.MessageTooLargeError(
                    f"the request is {size} bytes once encoded, over the {remote_wire.MAX_MESSAGE} bytes an "
                    "engine accepts"
                )
            try:
                if len(parts) == 1:
                    engine.sock.send(parts[0], zmq.NOBLOCK)
                else:  # a large payload: its own part, which ZeroMQ takes without a copy
                    engine.sock.send(parts[0], zmq.NOBLOCK | zmq.SNDMORE)
                    engine.sock.send(parts[1], zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:  # not connected (IMMEDIATE): try the next one
                tried.add(id(engine))
                continue
            entry.engine = engine
            engine.in_flight += 1
            self._in_flight[request_id] = entry
            self._check_soon(engine)
            return

    def cancel(self, request_id: Hashable, reason: str = "cancelled") -> None:
        entry = self._in_flight.pop(request_id, None)
        if entry is None or entry.engine is None:
            return
        engine = entry.engine
        engine.in_flight -= 1
        self._send(engine, [remote_wire.CANCEL, control.encode_cancel(request_id, reason, self._codec.encode_id)])
        self._close_if_left(engine)

    def _send(self, engine: EngineState, frames: list[bytes]) -> None:
        if engine.sock is None:
            return
        try:
            engine.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        self._check_soon(engine)

    def _check_soon(self, engine: EngineState) -> None:
        # ZeroMQ's descriptor is edge-triggered and a send may consume the edge of a message
        # that arrived meanwhile: look again after any send.
        if not engine.check_scheduled and self._loop is not None:
            engine.check_scheduled = True
            self._loop.call_soon(self._readable, engine)

    # -- pings -----------------------------------------------------------------------------

    def _ping_all(self) -> None:
        now = time.monotonic()
        timeout = self._config.ping_timeout
        for engine in list(self.pool.engines):
            if engine.state in (READY, STALLED) and now - engine.last_pong > timeout:
                self._lose(engine, f"no answer to pings for {now - engine.last_pong:.1f} s")
            self._ping(engine)

    def _ping(self, engine: EngineState) -> None:
        self._seq += 1
        self._send(engine, [remote_wire.PING, remote_wire.encode_ping(self._seq, self._config.ping_interval)])

    def _pong(self, engine: EngineState, pong: remote_wire.Pong) -> None:
        boot = bytes.fromhex(pong.boot)
        if engine.boot and boot != engine.boot and engine.in_flight:
            self._lose(engine, "it restarted")
        if engine.state == LEAVING:
            engine.boot = boot
            return
        engine.boot = boot
        engine.last_pong = time.monotonic()
        engine.reported_pending = pong.pending
        engine.mine_at_pong = engine.in_flight
        engine.capacity = pong.capacity
        engine.engine_dropped_replies = pong.dropped_replies
        # Judged by what its loop does with requests (it reads request_q), as a local main process
        # is: the pong itself comes from the host's I/O thread, whatever the loop does.
        problem = main_loop_problem(pong.facts(), self._config.ping_timeout)
        if problem is not None:
            if engine.state != STALLED:
                logger.warning("engine %s answers pings, but %s", engine.address, problem)
            engine.state = STALLED
            engine.problem = f"its main loop takes no requests: {problem}"
            return
        if engine.state != READY:
            logger.info("engine %s ready (boot %s)", engine.address, pong.boot[:8])
        engine.state = READY
        engine.problem = None

    # -- reading ---------------------------------------------------------------------------

    def _monitor_readable(self, engine: EngineState) -> None:
        monitor = engine.monitor
        while monitor is not None:
            try:
                message = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            event = parse_monitor_message(message)["event"]
            if event & _HANDSHAKE_FAILED:
                # Most often keys that do not match (or one side without CURVE): say so, since
                # the connection closing next tells nothing.
                engine.problem = "the ZeroMQ handshake failed: do the CURVE keys match the engine host's?"
                logger.warning("engine %s: %s", engine.address, engine.problem)
            elif event == zmq.EVENT_DISCONNECTED:
                if engine.state == CONNECTING:
                    # Never ready: nothing ran there; keep what the handshake said, if anything.
                    engine.problem = engine.problem or "its connection closed before it was ready"
                else:
                    self._lose(engine, "its connection closed")
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._ping(engine)  # a (re)started engine is ready after one round trip
            monitor = engine.monitor

    def _readable(self, engine: EngineState) -> None:
        engine.check_scheduled = False
        sock = engine.sock
        if sock is None:
            return
        replies: list[Any] = []
        for _ in range(_BURST):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
            try:
                self._handle(engine, frames, replies)
            except (remote_wire.WireError, CodecError, ValueError) as exc:
                self.bad_messages += 1
                logger.debug("dropped a malformed message from %s: %s", engine.address, exc)
        else:
            self._check_soon(engine)  # more may be waiting: after other work has had a turn
        if replies and self._sink is not None:
            self._sink.on_replies(replies)
        self._close_if_left(engine)

    def _handle(self, engine: EngineState, frames: list[bytes], replies: list[Any]) -> None:
        kind = frames[0]
        if kind == remote_wire.REPLY or kind == remote_wire.REPLIES:
            if len(frames) != 2:
                raise remote_wire.WireError("a reply of the wrong shape")
            decoded = self._codec.decode(frames[1])
            for reply in decoded if kind == remote_wire.REPLIES and type(decoded) is list else [decoded]:
                if self._take(engine, reply):
                    replies.append(reply)
        elif kind == remote_wire.PONG:
            if len(frames) != 2:
                raise remote_wire.WireError("a pong of the wrong shape")
            self._pong(engine, remote_wire.decode_pong(frames[1]))
        elif kind == remote_wire.REJECT:
            if len(frames) != 3:
                raise remote_wire.WireError("a reject of the wrong shape")
            self._rejected(engine, self._codec.decode_id(frames[1]), remote_wire.decode_reject(frames[2]))
        else:
            raise remote_wire.WireError(f"unknown kind {kind[:8]!r}")

    def _take(self, engine: EngineState, reply: Any) -> bool:
        """True if ``reply`` belongs to a request this engine is serving (else: late, dropped)."""
        try:
            entry = self._in_flight.get(getattr(reply, "id", None))
        except TypeError:
            entry = None
        if entry is None or entry.engine is not engine:
            engine.late_replies += 1
            self.late_replies += 1
            return False
        if not entry.streaming or getattr(reply, "is_final", False) or type(reply) is ErrorReply:
            del self._in_flight[reply.id]
            engine.in_flight -= 1
            engine.served += 1
        return True

    def _rejected(self, engine: EngineState, request_id: Hashable, reject: remote_wire.Reject) -> None:
        entry = self._in_flight.get(request_id)
        if entry is None or entry.engine is not engine:
            self.late_replies += 1
            return
        del self._in_flight[request_id]
        engine.in_flight -= 1
        entry.engine = None
        error: errors.IPCError = _rejection(reject)
        if reject.retryable and not entry.retried:
            entry.retried = True
            try:
                self._dispatch(request_id, entry, exclude={id(engine)})
                self.retried += 1
                return
            except errors.IPCError:
                pass  # no other engine: the first engine's answer stands
        if self._sink is not None:
            self._sink.on_failure(request_id, error)

    # -- what health and metrics show ------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            # Shaped like the relay's facts, so readiness reads both the same way.
            "pending": len(self._in_flight),
            "oldest_pending_age": 0.0,
            "last_reply_age": 0.0,
            "unanswered_age": 0.0,
            "engines": [engine.describe(now) for engine in self.pool.engines],
            "engine_problem": self.pool.problem(),
            "late_replies": self.late_replies,
            "retried": self.retried,
        }

    async def probe(self, timeout: float) -> dict[str, Any] | None:
        return self.facts()

    def metrics_text(self) -> bytes:
        """Per-engine series of this worker, in Prometheus text format."""
        pid = os.getpid()
        rows: list[str] = []
        series: tuple[tuple[str, str, str, Callable[[EngineState], int]], ...] = (
            ("isolated_api_engine_up", "gauge", "1 while the engine takes requests", lambda e: int(e.state == READY)),
            ("isolated_api_engine_in_flight", "gauge", "requests this worker has on the engine", lambda e: e.in_flight),
            ("isolated_api_engine_requests_total", "counter", "requests the engine answered", lambda e: e.served),
            ("isolated_api_engine_lost_total", "counter", "times the engine was lost", lambda e: e.lost_count),
            ("isolated_api_engine_late_replies_total", "counter", "late replies", lambda e: e.late_replies),
        )
        for name, kind, text, value in series:
            rows.append(f"# HELP {name} {text} (per HTTP worker)")
            rows.append(f"# TYPE {name} {kind}")
            for engine in self.pool.engines:
                address = engine.address.replace("\\", "\\\\").replace('"', '\\"')
                rows.append(f'{name}{{engine="{address}",worker="{pid}"}} {value(engine)}')
        return ("\n".join(rows) + "\n").encode()
