"""The main-process end of one HTTP child's private pipes.

A thread blocks reading the child's uplink pipe and forwards its requests through the relay;
replies for the child go to its downlink pipe through an ``Outbox`` (never a blocking write: a
worker that stops reading costs only itself). When the uplink reaches end-of-file the child is
gone: its routes are detached (the ids it abandoned are reported, and logged with the method and
path of each) and its pipes closed. A half-written frame left by a killed child dies with these
pipes.

The child is not trusted: a frame over the cap, an unknown kind, a control frame that fails its
schema (``shared/control.py``), or a worker that stalls its outbox makes it *condemned*: logged
once, killed (SIGKILL by the pid it reported when ready), and then cleaned up like any dead
worker, so its requests end once and the supervisor replaces it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from isolated_api.main.outbox import Outbox
from isolated_api.main.relay import Relay
from isolated_api.main.shared_requests import MainArena, SharedRequest
from isolated_api.shared import control, shared_payload
from isolated_api.shared.codecs import Codec, CodecError, PickleCodec, encode_parts
from isolated_api.shared.config import DEFAULT_MAX_MESSAGE_SIZE, OutboxLimits
from isolated_api.shared.errors import IPCError, ReplyTooLargeError
from isolated_api.shared.framing import (
    HEADER_SIZE,
    SIZED_FRAME,
    Body,
    FrameReader,
    Kind,
    ProtocolError,
    frame,
    frame_head,
    request_body_head,
    split_request,
)
from isolated_api.shared.messages import internal_error

logger = logging.getLogger("isolated_api.relay")

# What a pipe holds by default on Linux. Read into a buffer of that size, reused (FrameReader);
# os.read, which allocates the full size asked for on every call, cost more per read at 1 MiB
# than at 64 KiB for the same few hundred bytes (docs/performance.md, "Figures behind the code").
_READ_SIZE = 1 << 16

ReadyCallback = Callable[["PipeEndpoint", Any], None]


def _coalesced(parts: list[Body]) -> list[Body]:
    """One write's buffers: runs of small ones joined (one copy of a few bytes beats a buffer
    each in ``writev``), large payloads left where they are, never copied."""
    out: list[Body] = []
    run: list[Body] = []
    for part in parts:
        if len(part) < SIZED_FRAME:
            run.append(part)
            continue
        if run:
            out.append(b"".join(run))
            run = []
        out.append(part)
    if run:
        out.append(b"".join(run) if len(run) > 1 else run[0])
    return out


@dataclass(frozen=True)
class ServerHooks:
    """What an endpoint asks of the server it belongs to, on a worker's request: the main
    process's facts for a readiness probe, a metrics report to add, the metrics to render."""

    facts: Callable[[], dict[str, Any]] | None = None
    on_metrics: Callable[[dict[str, Any]], None] | None = None
    render_metrics: Callable[[], bytes] | None = None
    outbox: OutboxLimits = field(default_factory=OutboxLimits)
    # The largest frame body either way (``max_message_size``). From a worker, a header claiming
    # more is refused before a byte of its body is buffered (the worker checks its own requests
    # first: a 413). A worker accepts no larger reply, so one is refused here, before writing,
    # and fails its request alone.
    max_frame: int = DEFAULT_MAX_MESSAGE_SIZE


LostCallback = Callable[["PipeEndpoint", list[Hashable], bool], None]


class PipeEndpoint:
    def __init__(
        self,
        relay: Relay,
        uplink: Connection,
        downlink: Connection,
        *,
        name: str,
        on_ready: ReadyCallback,
        on_lost: LostCallback,
        hooks: ServerHooks | None = None,
        pid_of: Callable[[], int | None] = lambda: None,
        codec: Codec | None = None,
        arena: MainArena | None = None,
    ) -> None:
        self._codec: Codec = codec or PickleCodec()
        # Shared payloads (with_shared_payloads): this incarnation's arena, None when off.
        self._arena = arena
        self.name = name
        self._relay = relay
        self._uplink = uplink
        self._downlink = downlink
        self._down_fd = downlink.fileno()
        self._on_ready = on_ready
        self._on_lost = on_lost
        hooks = hooks or ServerHooks()
        self._facts = hooks.facts or relay.facts
        self._on_metrics = hooks.on_metrics
        self._render_metrics = hooks.render_metrics
        self._max_frame = hooks.max_frame
        self._outbox = Outbox(
            self._down_fd,
            name=name,
            limits=hooks.outbox,
            on_stalled=lambda why: self.condemn(f"it stopped reading its replies: {why}"),
        )
        self._close_lock = threading.Lock()
        # What condemn() kills: the pid this process started, never one the worker reports (a
        # compromised worker could name the main process, or any other process of this user).
        self._pid_of = pid_of
        self.condemned: str | None = None
        self._thread = threading.Thread(target=self._read_uplink, name=f"isolated-api-{name}", daemon=True)

    @property
    def peer_pid(self) -> int | None:
        return self._pid_of()

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- main -> child ---------------------------------------------------------------------

    def deliver(self, replies: list[Any], raws: list[bytes | None]) -> None:
        # Small frames go in one write; a large one on its own, announced, so that other
        # requests' small replies may pass it (outbox.py). Each write carries its requests' ids.
        parts: list[Body] = []
        keys: list[Hashable] = []
        for reply, raw in zip(replies, raws, strict=True):
            if type(reply) is list:
                ids = [item.id for item in reply]
                frames = self._bundle_frames(reply, raw)
            else:
                ids = [reply.id]
                frames = [self._reply_parts(reply, raw)]
            for frame_parts in frames:
                if sum(len(part) for part in frame_parts) - HEADER_SIZE < SIZED_FRAME:
                    parts += frame_parts
                    keys += ids
                    continue
                if parts:
                    self._outbox.write(*_coalesced(parts), keys=frozenset(keys))
                    parts, keys = [], []
                self._outbox.write_frame(frame_parts, keys=frozenset(ids))
        if parts:
            self._outbox.write(*_coalesced(parts), keys=frozenset(keys))

    def _reply_parts(self, reply: Any, raw: bytes | None) -> list[Body]:
        codec = self._codec
        request_id = reply.id
        owner = self._arena
        try:
            if owner is not None and (raw is None or len(raw) >= owner.min_size):
                encoded = shared_payload.encode(codec, reply, raw, owner.arena, owner.replies, owner.min_size)
                if isinstance(encoded, shared_payload.Encoded):
                    owner.replied()
                    return self._shared_reply_parts(request_id, encoded)
                pieces: list[Body] = [encoded]
            else:
                # A large buffer in the reply is written from where it is (encode_parts).
                pieces = [raw] if raw is not None else encode_parts(codec, reply)
            head = request_body_head(request_id, codec.encode_id)
        except CodecError as exc:  # a reply that was never encoded before (a thread queue, route_local)
            # The codec's error names the user's objects: logged here, the client gets the id only.
            failure, error_id = internal_error(request_id)
            logger.error(
                "a %s for %r could not be sent to %s (error id %s): %s",
                type(reply).__name__,
                request_id,
                self.name,
                error_id,
                exc,
                exc_info=exc,
            )
            return [self._reject_frame(request_id, IPCError(failure.message))]
        payload_size = sum(len(piece) for piece in pieces)
        size = len(head) + payload_size
        if size > self._max_frame:
            # Checked here, not by the worker: a frame it would refuse is never written to it.
            error = ReplyTooLargeError(
                f"the reply is {size} bytes once encoded, over max_message_size ({self._max_frame} bytes), "
                "the largest a worker accepts"
            )
            return [self._reject_frame(request_id, error)]
        return [frame_head(Kind.REPLY, head, payload_size), *pieces]

    def _shared_reply_parts(self, request_id: Hashable, encoded: shared_payload.Encoded) -> list[Body]:
        head = request_body_head(request_id, self._codec.encode_id)
        if len(head) + encoded.size > self._max_frame:
            assert self._arena is not None
            shared_payload.free_slots(self._arena.arena, encoded.slots)
            error = ReplyTooLargeError(
                f"the reply's in-band part is {encoded.size} bytes, over max_message_size ({self._max_frame} bytes)"
            )
            return [self._reject_frame(request_id, error)]
        return [frame_head(Kind.SHARED_REPLY, head, encoded.size), encoded.head, *encoded.parts]

    def _bundle_frames(self, replies: list[Any], raw: bytes | None) -> list[list[Body]]:
        # The ids travel beside the bundle so that, should the worker fail to decode it, each of
        # its requests fails with the reason instead of timing out.
        codec = self._codec
        ids = tuple(reply.id for reply in replies)
        try:
            payload = raw if raw is not None else codec.encode(replies)
            head = request_body_head(ids, codec.encode_control)
        except CodecError:
            payload = head = b""
        if not head or len(head) + len(payload) > self._max_frame:
            # One reply that can't be encoded, or a bundle over the cap, must not fail the others:
            # one frame each, and only a reply over the cap by itself fails.
            return [self._reply_parts(reply, None) for reply in replies]
        return [[frame_head(Kind.REPLIES, head, len(payload)), payload]]

    def send_drain(self, timeout: float) -> None:
        self._write(frame(Kind.DRAIN, self._codec.encode_control(timeout)))

    def _reject_frame(self, request_id: Hashable, error: IPCError) -> bytes:
        # Sent as plain data: the child rebuilds an error of the same name, status and headers.
        details = (request_id, type(error).__name__, error.message, error.status_code, error.headers)
        return frame(Kind.REJECT, self._codec.encode_control(details))

    def _write(self, data: bytes, request_id: Hashable | None = None) -> None:
        # A large control frame (a PONG with the metrics) is announced too (write_frame).
        keys: frozenset[Hashable] = frozenset() if request_id is None else frozenset((request_id,))
        self._outbox.write_frame([data], keys=keys)

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    def condemn(self, reason: str) -> None:
        """Treats the worker as dead: logged once, nothing more written to it, and killed, so its
        uplink ends and the usual clean-up runs (its requests end once, the supervisor replaces
        it). Safe from any thread, and to call twice."""
        with self._close_lock:
            if self.condemned is not None:
                return
            self.condemned = reason
        logger.error("%s (pid %s) is treated as dead: %s", self.name, self.peer_pid, reason)
        self._outbox.close()
        pid = self.peer_pid
        if pid is not None:
            # Our own child, not yet reaped (the supervisor joins it only after the uplink's EOF),
            # so the pid cannot have been reused.
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    # -- child -> main ---------------------------------------------------------------------

    def _read_uplink(self) -> None:
        reader = FrameReader(self._uplink.fileno(), _READ_SIZE, self._max_frame)
        try:
            while self.condemned is None:
                try:
                    count, frames = reader.read()
                    for kind, body in frames:
                        self._handle(kind, body)
                except OSError:
                    break
                except ProtocolError as exc:
                    self.condemn(f"it broke the frame protocol: {exc}")
                    break
                if not count:
                    break
        finally:
            abandoned = self._relay.detach(self)
            self._outbox.close()
            if self._arena is not None:
                self._arena.retire()
            with self._close_lock:
                self._downlink.close()
            self._uplink.close()
            self._on_lost(self, abandoned, reader.decoder.has_partial_frame)

    def _split(self, body: bytes | bytearray) -> tuple[Hashable, str, memoryview]:
        try:
            request_id, origin, payload = split_request(body, self._codec.decode_id)
            hash(request_id)
        except ProtocolError:
            raise
        except Exception as exc:  # an id that does not decode, or is unhashable
            raise ProtocolError(f"a request id that does not decode: {exc!r}") from None
        return request_id, origin, payload

    def _handle_shared(self, kind: Kind, body: bytes | bytearray) -> None:
        owner = self._arena
        if owner is None:
            raise ProtocolError("a shared-payload request, but shared payloads are off")
        request_id, origin, payload = self._split(body)
        # Every handle is checked against the request region before a byte of it is read.
        segments, inline = shared_payload.parse(payload, owner.arena, trusted=False)
        request = SharedRequest(owner, segments, bytes(inline), self._codec)
        owner.queued()
        try:
            self._relay.forward(
                self, request_id, request=request, streaming=kind is Kind.SHARED_STREAM_REQUEST, origin=origin
            )
        except IPCError as exc:
            request.discard()
            self._write(self._reject_frame(request_id, exc), request_id)

    def _handle(self, kind: Kind, body: bytes | bytearray) -> None:
        if kind is Kind.REQUEST or kind is Kind.STREAM_REQUEST:
            request_id, origin, payload = self._split(body)
            try:
                self._relay.forward(
                    self, request_id, payload=payload, streaming=kind is Kind.STREAM_REQUEST, origin=origin
                )
            except IPCError as exc:
                self._write(self._reject_frame(request_id, exc), request_id)
            return
        if kind is Kind.SHARED_REQUEST or kind is Kind.SHARED_STREAM_REQUEST:
            self._handle_shared(kind, body)
            return
        if type(body) is not bytes:  # a control frame over SIZED_FRAME: its schema check refuses it
            body = bytes(body)
        if kind is Kind.CANCEL:
            request_id, reason = control.decode_cancel(body, self._codec.decode_id)
            self._relay.abandon(self, request_id, reason)
        elif kind is Kind.PROBE:
            # Answered here, on the relay's side of the pipe: the user's loop never sees probes.
            token, what = control.decode_probe(body)
            answer = self._facts() if what == "facts" else self._render_metrics() if self._render_metrics else None
            self._write(frame(Kind.PONG, self._codec.encode_control((token, answer))))
        elif kind is Kind.METRICS:
            report = control.decode_metrics(body)
            if self._on_metrics is not None:
                self._on_metrics(report)
        elif kind is Kind.READY:
            self._on_ready(self, control.decode_ready(body))
        else:
            raise ProtocolError(f"a frame of kind {kind.name}, which only the main process sends")
