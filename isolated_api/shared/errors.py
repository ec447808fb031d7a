"""Errors a request can end with. Each carries the HTTP status the client should see
(DESIGN.md invariant 5), so the HTTP layer maps them without guessing."""

from __future__ import annotations


class IPCError(Exception):
    """A request through the channel did not get a normal reply."""

    status_code = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class ChannelClosedError(IPCError):
    """The channel is closed: the main process is gone, or the server is shutting down."""

    status_code = 503


class IPCTimeoutError(IPCError, TimeoutError):
    """No reply arrived within the timeout."""

    status_code = 504


class OverloadedError(IPCError):
    """Admission refused: ``max_pending`` requests are already awaiting replies (503 by default,
    429 if the server is configured so)."""

    status_code = 503

    def __init__(self, message: str, *, retry_after: int = 1, status_code: int = 503) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.status_code = status_code


class QueueFullError(IPCError):
    """The main process's bounded request queue stayed full for longer than ``queue_timeout``."""

    status_code = 503

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class DuplicateRequestIdError(IPCError):
    """A request was submitted with an id that is already awaiting a reply."""

    status_code = 409


class MessageTooLargeError(IPCError):
    """A request that, encoded, is larger than the worker may send to the main process
    (``max_message_size``): refused before it is written."""

    status_code = 413


class ReplyTooLargeError(IPCError):
    """The main process's reply, encoded, is larger than a worker accepts (``max_message_size``):
    that request fails, the worker and its other requests go on."""

    status_code = 502


class RemoteError(IPCError):
    """The main process answered with an ``ErrorReply``."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class StreamOverflowError(IPCError):
    """A stream's client read more slowly than the main process wrote, its buffer filled, and
    no ``merge`` function was given to fold chunks together (or ``merge_text``'s bound was passed)."""

    status_code = 503
