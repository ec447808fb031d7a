"""Message types the framework defines. User requests and replies are the user's own
picklable objects; these are only for what the framework itself has to say."""

from __future__ import annotations

import secrets
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


def internal_error(request_id: Hashable) -> tuple[ErrorReply, str]:
    """A 500 for ``request_id`` that tells the client only an error id, and that id: log the
    detail under it. What failed (an exception's text: a path, a key, a local object's name) is
    for the operator, never for the client."""
    error_id = secrets.token_hex(6)
    return ErrorReply(request_id, f"internal error (error id {error_id})", 500), error_id


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
