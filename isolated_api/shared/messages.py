"""Message types the framework defines. User requests and replies are the user's own
picklable objects; these are only for what the framework itself has to say."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorReply:
    """Put this on ``response_q`` to fail request ``id``: the client gets ``status_code``
    (400-599; anything else becomes 500) with ``message`` as the JSON ``detail``."""

    id: Hashable
    message: str
    status_code: int = 500

    @property
    def http_status(self) -> int:
        code = self.status_code
        return code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else 500


# The message a handler task is cancelled with when its client went away; the channel reads it to
# tell the main process "disconnected" rather than "cancelled".
CLIENT_DISCONNECTED = "client disconnected"


@dataclass(frozen=True)
class CancelRequest:
    """Put on ``request_q`` (only when the server was built with ``.subprocess.with_cancellation()``)
    when nobody waits for request ``id`` any more: its client disconnected, it timed out, its
    handler was cancelled, or the HTTP worker serving it died. Sent once per id; stop the work and
    don't reply (a reply would be dropped anyway). ``reason`` is one of ``"disconnected"`` (the
    client went away), ``"timeout"``, ``"cancelled"`` (the handler was cancelled or left a stream
    early), ``"worker_died"``, ``"closed"`` (an in-process channel was closed)."""

    id: Hashable
    reason: str
