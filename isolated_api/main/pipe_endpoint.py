"""The main-process end of one HTTP child's private pipes.

A thread blocks reading the child's uplink pipe and forwards its requests through the relay;
replies for the child are written to its downlink pipe. When the uplink reaches end-of-file the
child is gone: its routes are detached (the ids it abandoned are reported) and its pipes closed.
A half-written frame left by a killed child dies with these pipes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from isolated_api.main.relay import Relay
from isolated_api.shared.codecs import Codec, CodecError, PickleCodec
from isolated_api.shared.errors import IPCError
from isolated_api.shared.framing import FrameDecoder, Kind, frame, request_body, split_request_body

logger = logging.getLogger("isolated_api.relay")

# What a pipe holds by default on Linux. os.read allocates the full size asked for on every call:
# asking for 1 MiB cost ~18 us more per read than 64 KiB here, for the same few hundred bytes.
_READ_SIZE = 1 << 16

ReadyCallback = Callable[["PipeEndpoint", Any], None]


@dataclass(frozen=True)
class ServerHooks:
    """What an endpoint asks of the server it belongs to, on a worker's request: the main
    process's facts for a readiness probe, a metrics report to add, the metrics to render."""

    facts: Callable[[], dict[str, Any]] | None = None
    on_metrics: Callable[[dict[str, Any]], None] | None = None
    render_metrics: Callable[[], bytes] | None = None


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
        codec: Codec | None = None,
    ) -> None:
        self._codec: Codec = codec or PickleCodec()
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
        self._write_lock = threading.Lock()
        self._writable = True
        self._thread = threading.Thread(target=self._read_uplink, name=f"isolated-api-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- main -> child ---------------------------------------------------------------------

    def deliver(self, replies: list[Any], raws: list[bytes | None]) -> None:
        chunks: list[bytes] = []
        for reply, raw in zip(replies, raws, strict=True):
            chunks.append(self._bundle_frame(reply, raw) if type(reply) is list else self._reply_frame(reply, raw))
        self._write(b"".join(chunks))

    def _reply_frame(self, reply: Any, raw: bytes | None) -> bytes:
        codec = self._codec
        request_id = reply.id
        try:
            payload = raw if raw is not None else codec.encode(reply)
            return frame(Kind.REPLY, request_body(request_id, payload, codec.encode_id))
        except CodecError as exc:  # a reply that was never encoded before (a thread queue, route_local)
            return self._reject_frame(request_id, IPCError(f"the reply could not be sent: {exc}"))

    def _bundle_frame(self, replies: list[Any], raw: bytes | None) -> bytes:
        # The ids travel beside the bundle so that, should the worker fail to decode it, each of
        # its requests fails with the reason instead of timing out.
        codec = self._codec
        ids = tuple(reply.id for reply in replies)
        try:
            payload = raw if raw is not None else codec.encode(replies)
            return frame(Kind.REPLIES, request_body(ids, payload, codec.encode_control))
        except CodecError:
            # One reply that can't be encoded must not fail the others: one frame each.
            return b"".join(self._reply_frame(reply, None) for reply in replies)

    def send_drain(self, timeout: float) -> None:
        self._write(frame(Kind.DRAIN, self._codec.encode_control(timeout)))

    def _reject_frame(self, request_id: Hashable, error: IPCError) -> bytes:
        # Sent as plain data: the child rebuilds an error of the same name, status and headers.
        details = (request_id, type(error).__name__, error.message, error.status_code, error.headers)
        return frame(Kind.REJECT, self._codec.encode_control(details))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with self._write_lock:
            if not self._writable:
                return
            try:
                while view:
                    written = os.write(self._down_fd, view)
                    view = view[written:]
            except OSError:  # the child is gone; its uplink EOF does the cleanup
                self._writable = False

    # -- child -> main ---------------------------------------------------------------------

    def _read_uplink(self) -> None:
        decoder = FrameDecoder()
        fd = self._uplink.fileno()
        try:
            while True:
                try:
                    data = os.read(fd, _READ_SIZE)
                except OSError:
                    break
                if not data:
                    break
                for kind, body in decoder.feed(data):
                    self._handle(kind, body)
        finally:
            abandoned = self._relay.detach(self)
            with self._write_lock:
                self._writable = False
                self._downlink.close()
            self._uplink.close()
            self._on_lost(self, abandoned, decoder.has_partial_frame)

    def _handle(self, kind: Kind, body: bytes) -> None:
        if kind is Kind.REQUEST or kind is Kind.STREAM_REQUEST:
            request_id, payload = split_request_body(body, self._codec.decode_id)
            try:
                self._relay.forward(self, request_id, payload=payload, streaming=kind is Kind.STREAM_REQUEST)
            except IPCError as exc:
                self._write(self._reject_frame(request_id, exc))
        elif kind is Kind.CANCEL:
            request_id, reason = self._codec.decode_control(body)
            self._relay.abandon(self, request_id, reason)
        elif kind is Kind.PROBE:
            # Answered here, on the relay's side of the pipe: the user's loop never sees probes.
            token, what = self._codec.decode_control(body)
            answer = self._facts() if what == "facts" else self._render_metrics() if self._render_metrics else None
            self._write(frame(Kind.PONG, self._codec.encode_control((token, answer))))
        elif kind is Kind.METRICS:
            if self._on_metrics is not None:
                self._on_metrics(self._codec.decode_control(body))
        elif kind is Kind.READY:
            self._on_ready(self, self._codec.decode_control(body))
        else:
            logger.warning("%s sent an unexpected frame kind %s", self.name, kind)
