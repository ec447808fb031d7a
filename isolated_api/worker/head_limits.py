"""uvicorn's httptools protocol with limits on a request's head (request line and headers) and on
how long a connection may keep the server waiting, which uvicorn does not offer.

- Size: httptools gathers a header's value by concatenation, without a limit (a 300 MB header
  was accepted), and uvicorn keeps the URL the same way. Each chunk read while a head is still
  incomplete is counted, and so are the URL and each header once parsed; past ``max_header_size``
  the client gets 431 (414 for the URL alone), past ``max_headers`` headers 431. What is held is
  bounded by the limit plus one read (asyncio reads at most 256 KiB at a time).
- Time: uvicorn's only timer is keep-alive, armed after a response and cancelled by the first
  byte of the next request, so a client sending a byte now and then (slowloris), or nothing at
  all after connecting, held its connection forever. A head timer runs from the connection
  opening, or from the first byte of a later request, to the end of the headers: 408 and close
  (a silent close if nothing was sent).
- The body, too, is timed here: it must arrive whole within ``body_timeout`` of the read that
  completed the head, else 408 (or a plain close if the response has begun). The timer exists
  only for a body still incomplete at the end of a read: most requests arrive whole in one read
  and cost no timer at all (the size limit is the app's: ``body_limits.py``).
- A response sent before its request's body arrived in full (a route that ignores the body, an
  error) leaves the rest to be read and discarded, as uvicorn does, so the connection stays usable
  for the next request; but only as long as nginx's lingering close would: past ``max_body_size``
  discarded bytes, or ``body_timeout`` seconds (``header_timeout`` if none), the connection is
  closed. Unbounded, uvicorn would discard a body that never ends for as long as it comes.

Each refusal is written by the protocol itself, with ``Connection: close``: the app never sees it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from isolated_api.shared.config import RequestLimits


def head_limited_protocol(limits: RequestLimits) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, bound to ``limits``."""
    bound: type[HeadLimitedProtocol] = type("HeadLimitedProtocol", (HeadLimitedProtocol,), {"limits": limits})
    return bound


class HeadLimitedProtocol(HttpToolsProtocol):
    limits: ClassVar[RequestLimits] = RequestLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_began_in_read = False
        # Two lower bounds of the head's size, each within one read of the truth: the bytes of
        # reads that fell wholly inside the head, and the URL and headers httptools handed over.
        self._head_read = 0
        self._head_parsed = 0
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None
        self._head_started = 0.0
        # The body's deadline, armed only while a body is incomplete at the end of a read; and
        # the rest of a body the app answered without reading (bytes discarded).
        self._body_timer: asyncio.TimerHandle | None = None
        self._discarding = False
        self._discarded = 0

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # answered and closing: the rest is not parsed
        self._head_began_in_read = False
        super().data_received(data)
        if self._in_head:
            if not self._head_began_in_read:
                # In the head before this read and still in it after: all of it was head.
                self._head_read += len(data)
                self._check_head_size()
            if self._head_timer is None and self._refusal is None:
                # A head that did not arrive whole in one read: now it is on the clock (from its
                # first byte). Most heads do arrive whole, and then no timer is made at all.
                deadline = self._head_started + self.limits.header_timeout
                self._head_timer = self.loop.call_at(deadline, self._head_timed_out)
        elif self._body_timer is None and self.limits.body_timeout is not None and self._refusal is None:
            cycle = self.cycle
            if cycle is not None and cycle.more_body and not cycle.response_complete:
                # A body still on its way after this read: now it is on the clock.
                self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
        if self._refusal is not None:
            self._send_refusal()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # uvicorn reads the rest and drops it (its on_body ignores a finished cycle's body).
            self._discarding = True
            self._discarded = 0
            if self._body_timer is None:
                limit = self.limits.body_timeout or self.limits.header_timeout
                self._body_timer = self.loop.call_later(limit, self._body_timed_out)
        super().on_response_complete()

    # Parser callbacks (inside super().data_received)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._head_began_in_read = True
        self._head_read = self._head_parsed = self._header_count = 0
        # A later request on a kept-alive connection is timed from its first byte (data_received
        # arms the timer only if the head is still incomplete at the end of the read).
        self._head_started = self.loop.time()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_parsed += len(url)
        if len(self.url) > self.limits.max_header_size:
            self._refuse(414, f"request URL longer than {self.limits.max_header_size} bytes (max_header_size)")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refusal is not None:
            return
        super().on_header(name, value)
        self._header_count += 1
        self._head_parsed += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers:
            self._refuse(431, f"more than {self.limits.max_headers} request headers (max_headers)")
        self._check_head_size()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._refusal is not None:
            return  # no ASGI task for a refused request
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._discarding:
            self._discarded += len(body)
            limit = self.limits.max_body_size
            if limit is not None and self._discarded > limit and not self.transport.is_closing():
                self._cancel_body_timer()
                self.transport.close()
            return
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        # The body is in (or the unread rest is over): no deadline, the connection carries on.
        self._cancel_body_timer()
        self._discarding = False
        if self._refusal is None:
            super().on_message_complete()

    # The body's deadline

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # The app is still waiting for the body: the client gets our answer, and the app a
            # disconnect once the connection is lost (no handler runs, nothing reaches the main process).
            self._write_refusal(408, f"request body not received within {self.limits.body_timeout} s (body_timeout)")
        else:
            self.transport.close()

    # Limits

    def _check_head_size(self) -> None:
        if max(self._head_read, self._head_parsed) > self.limits.max_header_size:
            self._refuse(431, f"request headers larger than {self.limits.max_header_size} bytes (max_header_size)")

    def _refuse(self, status: int, detail: str) -> None:
        if self._refusal is None:
            self._refusal = (status, detail)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._refusal is not None:
            return
        if not self._in_head:
            self.transport.close()  # connected and sent nothing: nobody to answer
            return
        self._refuse(408, f"request headers not received within {self.limits.header_timeout} s (header_timeout)")
        self._send_refusal()

    def _send_refusal(self) -> None:
        assert self._refusal is not None
        self._cancel_head_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined request's head, while the previous response is still being written:
            # that response ends the connection (uvicorn closes once it is complete).
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self._write_refusal(*self._refusal)

    def _write_refusal(self, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
