"""EngineHost: the main process of a GPU machine serving API hosts on other machines over ZeroMQ.

The user's loop (or ``Engine``) is unchanged: it reads ``request_q`` and puts replies on
``response_q``. The host is the same ``Relay`` the single-machine server uses, with remote API
workers as its endpoints: one ROUTER socket, one I/O thread that owns it, and a reply path from
the relay's reader thread through an in-process PUSH socket (ZeroMQ sockets belong to one thread;
the I/O thread sends what the relay hands it). Nothing polls: the I/O thread blocks in
``zmq.Poller.poll`` and wakes for a message, or every half second while API peers are connected to
notice one that went silent.

What it guarantees its peers:
- **Admission is exact:** at most ``max_pending`` requests wait in this process, counted over all
  API workers; past it a request is refused unrun (REJECT "full"), so the API may try another
  engine.
- **A request from before a restart never runs:** each start draws a new boot id; an API worker
  stamps each request with the boot id it last heard in a pong, and a request for an earlier
  boot is refused unrun (REJECT "stale").
- **A vanished API worker's work is cancelled:** a peer that stops pinging for three of its ping
  intervals (plus one second) is detached, and with ``cancel_notices`` the loop hears
  ``CancelRequest(id, "worker_died")`` for each of its requests.
- **Nothing a peer sends runs code:** requests are decoded by the user's loop with the codec
  (``MsgspecCodec`` builds only the declared types); ``PickleCodec`` is refused unless
  ``allow_pickle=True``; the framework's own messages are checked JSON.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Hashable
from typing import Any

import zmq

from isolated_api.main.relay import Relay
from isolated_api.shared import control, remote_wire
from isolated_api.shared.codecs import Codec, CodecError, PickleCodec
from isolated_api.shared.config import ConfigError
from isolated_api.shared.engines import parse_address
from isolated_api.shared.errors import (
    ChannelClosedError,
    DuplicateRequestIdError,
    IPCError,
    OverloadedError,
    QueueFullError,
)
from isolated_api.shared.framing import ProtocolError
from isolated_api.shared.messages import internal_error

logger = logging.getLogger("isolated_api.engine_host")

# While API peers are connected, the I/O thread wakes this often to notice one that went silent.
_SWEEP_INTERVAL = 0.5
# Messages handled per socket before the other socket gets its turn.
_BURST = 256
_STOP = b""

PICKLE_REFUSED = (
    "PickleCodec over the network lets whoever reaches this port run code in this process "
    "(unpickling runs code: vLLM's CVE-2025-30165). Use MsgspecCodec(*your_struct_types), or pass "
    "allow_pickle=True if only trusted hosts can reach the port"
)


class EngineBindError(OSError):
    """The host could not bind its address (in use, or not an address of this machine)."""


class _Peer:
    """One API worker, as the relay sees it: an endpoint whose replies go out by its identity."""

    def __init__(self, host: EngineHost, identity: bytes) -> None:
        self._host = host
        self.identity = identity
        self.name = f"API peer {identity.hex()}"
        self.seen = time.monotonic()
        self.timeout = 3 * 0.5 + 1.0

    def deliver(self, replies: list[Any], raws: list[bytes | None]) -> None:
        codec = self._host.codec
        for reply, raw in zip(replies, raws, strict=True):
            bundle = type(reply) is list
            try:
                payload = raw if raw is not None else codec.encode(reply)
            except CodecError as exc:
                # The codec's error names the user's objects: logged here, the client gets the id only.
                for member in reply if bundle else [reply]:
                    failure, error_id = internal_error(member.id)
                    logger.error("a reply for %r could not be sent (error id %s): %s", member.id, error_id, exc)
                    self._host.send_reject(self.identity, member.id, "bad", failure.message, 500)
                continue
            self._host.send_out([self.identity, remote_wire.REPLIES if bundle else remote_wire.REPLY, payload])


class EngineHost:
    """Serves this process's ``request_q``/``response_q`` to API hosts on other machines.

    ``bind`` is a ZeroMQ address (``"tcp://0.0.0.0:5700"``; port 0 picks a free port). After
    ``start()``, ``address`` is what API hosts dial (``.subprocess.with_engines(host.address)``).
    ``codec`` must be the API hosts' codec; ``MsgspecCodec`` is the one to use on a network.
    ``max_pending`` bounds the requests waiting here over all API workers (None: unbounded).
    ``cancel_notices`` puts ``CancelRequest`` on ``request_q`` for requests nobody waits for any
    more (timeouts, cancellations, a vanished API worker). ``curve_secret_key`` (z85 text, from
    ``zmq.curve_keypair()``) encrypts every connection and admits only clients that know the
    matching public key (``with_engines(..., curve_server_key=public)``).
    """

    def __init__(
        self,
        request_q: Any,
        response_q: Any,
        *,
        bind: str,
        codec: Codec,
        max_pending: int | None = None,
        queue_timeout: float = 5.0,
        cancel_notices: bool = False,
        allow_pickle: bool = False,
        curve_secret_key: str | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
    ) -> None:
        parse_address(bind, allow_wildcard=True)
        if isinstance(codec, PickleCodec) and not allow_pickle:
            raise ConfigError(PICKLE_REFUSED)
        bad_bound = isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1
        if max_pending is not None and bad_bound:
            raise ConfigError(f"max_pending must be a positive integer or None, got {max_pending!r}")
        if curve_secret_key is not None and (not isinstance(curve_secret_key, str) or len(curve_secret_key) != 40):
            raise ConfigError("curve_secret_key must be 40 characters of z85 text (zmq.curve_keypair())")
        self.codec = codec
        self._bind = bind
        self._curve_secret = curve_secret_key
        self._heartbeat = (heartbeat_interval, heartbeat_timeout)
        self.max_pending = max_pending
        self.relay = Relay(
            request_q,
            response_q,
            queue_timeout=queue_timeout,
            max_pending=max_pending,
            cancel_notices=cancel_notices,
            codec=codec,
        )
        self.address: str | None = None
        self.boot_id = b""
        self._context: zmq.Context[Any] | None = None
        self._router: zmq.Socket[Any] | None = None
        self._push: zmq.Socket[Any] | None = None
        self._pull: zmq.Socket[Any] | None = None
        self._push_lock = threading.Lock()
        self._peers: dict[bytes, _Peer] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        # Counted, never raised: a network peer cannot make this host fail.
        self.bad_messages = 0
        self.unreachable_replies = 0
        self.stale_rejected = 0
        self.peers_lost = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Binds, starts the relay and the I/O thread; returns once API hosts can connect."""
        if self._thread is not None:
            raise RuntimeError("this EngineHost is already started")
        context: zmq.Context[Any] = zmq.Context()
        router = context.socket(zmq.ROUTER)
        # Sending to a peer that is gone raises instead of dropping silently (counted).
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, remote_wire.MAX_MESSAGE)
        # Replies are never dropped for a high-water mark; a peer that stops reading is noticed by
        # the heartbeats below (its connection closes) or by its own pings stopping.
        router.setsockopt(zmq.SNDHWM, 0)
        router.setsockopt(zmq.RCVHWM, 0)
        interval, timeout = self._heartbeat
        router.setsockopt(zmq.HEARTBEAT_IVL, int(interval * 1000))
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(timeout * 1000))
        router.setsockopt(zmq.HEARTBEAT_TTL, int(timeout * 1000))
        if self._curve_secret is not None:
            router.setsockopt(zmq.CURVE_SERVER, 1)
            router.setsockopt(zmq.CURVE_SECRETKEY, self._curve_secret.encode())
        try:
            router.bind(self._bind)
        except zmq.ZMQError as exc:
            router.close(0)
            context.term()
            raise EngineBindError(
                exc.errno,
                f"the engine host cannot bind {self._bind}: {exc.strerror}. "
                "Choose another port (port 0 picks a free one) or an address of this machine",
            ) from None
        endpoint = router.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(endpoint, bytes)
        self.address = _dialable(endpoint.decode())
        self.boot_id = os.urandom(remote_wire.BOOT_ID_SIZE)
        wake = f"inproc://isolated-api-engine-host-{uuid.uuid4().hex}"
        pull = context.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, 0)
        pull.bind(wake)
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 0)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(wake)
        self._context, self._router, self._pull, self._push = context, router, pull, push
        self._stopping = False
        self.relay.start()
        self._thread = threading.Thread(target=self._serve, name="isolated-api-engine-host", daemon=True)
        self._thread.start()
        logger.info("engine host serving %s (boot %s)", self.address, self.boot_id.hex()[:8])

    def stop(self, timeout: float = 2.0) -> None:
        """Stops serving: API hosts see this engine lost and end the requests that were on it.
        Safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self.send_out([_STOP])
        thread.join(timeout)
        self.relay.close()
        for sock in (self._push, self._pull, self._router):
            if sock is not None:
                sock.close(0)
        if self._context is not None:
            self._context.term()
        self._context = self._router = self._push = self._pull = None
        self._peers.clear()

    def __enter__(self) -> EngineHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def peer_count(self) -> int:
        """API workers heard from recently."""
        return len(self._peers)

    # -- sending (any thread) --------------------------------------------------------------

    def send_out(self, frames: list[bytes]) -> None:
        """Queues a message for the I/O thread, which alone may use the ROUTER socket."""
        with self._push_lock:
            push = self._push
            if push is None:
                return
            try:
                push.send_multipart(frames, copy=len(frames[-1]) < 65536)
            except zmq.ZMQError:  # closing
                pass

    def send_reject(self, identity: bytes, request_id: Hashable, why: str, message: str, status: int) -> None:
        try:
            id_bytes = self.codec.encode_id(request_id)
        except Exception:
            return
        body = remote_wire.encode_reject(remote_wire.Reject(why, message, status, 1))
        self.send_out([identity, remote_wire.REJECT, id_bytes, body])

    # -- the I/O thread --------------------------------------------------------------------

    def _serve(self) -> None:
        router, pull = self._router, self._pull
        assert router is not None and pull is not None
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        try:
            while not self._stopping:
                # Block for good while no peer is connected: an idle host costs no CPU.
                timeout = int(_SWEEP_INTERVAL * 1000) if self._peers else None
                ready = dict(poller.poll(timeout))
                if pull in ready:
                    self._send_queued(router, pull)
                if router in ready:
                    self._receive(router)
                if self._peers:
                    self._sweep()
        except zmq.ZMQError as exc:
            if not self._stopping:
                logger.error("engine host I/O stopped: %r", exc)

    def _send_queued(self, router: zmq.Socket[Any], pull: zmq.Socket[Any]) -> None:
        for _ in range(_BURST):
            try:
                frames = pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) == 1 and frames[0].bytes == _STOP:
                return
            try:
                router.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:  # EHOSTUNREACH: the peer is gone; its requests end with it
                self.unreachable_replies += 1

    def _receive(self, router: zmq.Socket[Any]) -> None:
        for _ in range(_BURST):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._handle(router, frames)
            except (remote_wire.WireError, ProtocolError, CodecError) as exc:
                self.bad_messages += 1
                logger.debug("dropped a malformed message from %s: %s", frames[0].hex(), exc)

    def _peer(self, identity: bytes) -> _Peer:
        peer = self._peers.get(identity)
        if peer is None:
            peer = self._peers[identity] = _Peer(self, identity)
        peer.seen = time.monotonic()
        return peer

    def _handle(self, router: zmq.Socket[Any], frames: list[bytes]) -> None:
        if len(frames) < 2:
            raise remote_wire.WireError("a message without a kind")
        identity, kind = frames[0], frames[1]
        if kind[:1] == remote_wire.REQUEST or kind[:1] == remote_wire.STREAM_REQUEST:
            if len(frames) not in (2, 3):
                raise remote_wire.WireError("a request of the wrong shape")
            # Three parts: a large payload came as a part of its own.
            self._request(self._peer(identity), kind, frames[2] if len(frames) == 3 else None)
        elif kind == remote_wire.PING:
            if len(frames) != 3:
                raise remote_wire.WireError("a ping of the wrong shape")
            seq, interval = remote_wire.decode_ping(frames[2])
            peer = self._peer(identity)
            # Three missed pings, and a second for a busy network, before it counts as gone.
            peer.timeout = 3 * min(max(interval, 0.05), 30.0) + 1.0
            self._pong(router, identity, seq)
        elif kind == remote_wire.CANCEL:
            if len(frames) != 3:
                raise remote_wire.WireError("a cancel of the wrong shape")
            request_id, reason = control.decode_cancel(frames[2], self.codec.decode_id)
            self.relay.abandon(self._peer(identity), request_id, reason)
        elif kind == remote_wire.BYE:
            if identity in self._peers:
                self.relay.detach(self._peers.pop(identity), "closed")
        else:
            raise remote_wire.WireError(f"unknown kind {kind[:8]!r}")

    def _request(self, peer: _Peer, data: bytes, separate: bytes | None = None) -> None:
        streaming, boot, id_bytes, origin, payload = remote_wire.decode_request(data)
        if separate is not None:
            if payload:
                raise remote_wire.WireError("a request with a payload in both parts")
            payload = separate
        try:
            request_id = self.codec.decode_id(id_bytes)
            hash(request_id)
        except Exception as exc:
            raise remote_wire.WireError(f"a request id that does not decode: {exc!r}") from None
        if boot != self.boot_id:
            self.stale_rejected += 1
            self._reject_now(peer.identity, id_bytes, "stale", "sent to an earlier start of this engine", 503)
            return
        try:
            self.relay.forward(
                peer,
                request_id,
                payload=payload,
                streaming=streaming,
                origin=origin.decode("utf-8", "replace"),
            )
        except IPCError as exc:
            why = _REJECT_REASONS.get(type(exc), "bad")
            retry_after = int(exc.headers.get("Retry-After", "1")) if exc.headers else 1
            self._reject_now(peer.identity, id_bytes, why, exc.message, exc.status_code, retry_after)

    def _reject_now(
        self, identity: bytes, id_bytes: bytes, why: str, message: str, status: int, retry_after: int = 1
    ) -> None:
        body = remote_wire.encode_reject(remote_wire.Reject(why, message, status, retry_after))
        self._send_now([identity, remote_wire.REJECT, id_bytes, body])

    def _pong(self, router: zmq.Socket[Any], identity: bytes, seq: int) -> None:
        facts = self.relay.facts()
        pong = remote_wire.Pong(
            seq=seq,
            boot=self.boot_id.hex(),
            pending=facts["pending"],
            capacity=self.max_pending or 0,
            oldest_pending_age=facts["oldest_pending_age"],
            last_reply_age=facts["last_reply_age"],
            unanswered_age=facts["unanswered_age"],
            dropped_replies=self.relay.dropped_count,
            unread=facts["unread"],
            unread_age=facts["unread_age"],
            read_quiet_age=facts["read_quiet_age"],
        )
        self._send_now([identity, remote_wire.PONG, remote_wire.encode_pong(pong)])

    def _send_now(self, frames: list[bytes]) -> None:
        # On the I/O thread, which owns the ROUTER socket.
        router = self._router
        if router is None:
            return
        try:
            router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            self.unreachable_replies += 1

    def _sweep(self) -> None:
        now = time.monotonic()
        for identity, peer in list(self._peers.items()):
            if now - peer.seen > peer.timeout:
                del self._peers[identity]
                self.peers_lost += 1
                abandoned = self.relay.detach(peer, "worker_died")
                if abandoned:
                    logger.warning(
                        "%s went silent for %.1f s with %d request(s) in flight; they are cancelled",
                        peer.name,
                        now - peer.seen,
                        len(abandoned),
                    )


_REJECT_REASONS: dict[type[IPCError], str] = {
    OverloadedError: "full",
    QueueFullError: "queue_full",
    DuplicateRequestIdError: "duplicate",
    ChannelClosedError: "closed",
}


def _dialable(endpoint: str) -> str:
    """The bound endpoint as another host dials it: a wildcard becomes this machine's name."""
    if endpoint.startswith("tcp://0.0.0.0:") or endpoint.startswith("tcp://[::]:"):
        port = endpoint.rsplit(":", 1)[1]
        return f"tcp://{socket.getfqdn()}:{port}"
    return endpoint
