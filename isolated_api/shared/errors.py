"""Errors a request can end with. Each carries the HTTP status the client should see
(DESIGN.md invariant 5), so the HTTP layer maps them without guessing.

Every one is built as ``cls(message, status_code=..., headers=...)`` (each keyword optional: the
class's own status and headers otherwise), so an error the other side of a pipe or a socket sent
as plain data comes back as the same class through one door, ``from_wire``."""

from __future__ import annotations


class IPCError(Exception):
    """A request through the channel did not get a normal reply."""

    status_code = 500

    def __init__(self, message: str, *, status_code: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if status_code is not None:
            self.status_code = status_code


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

    def __init__(
        self,
        message: str,
        *,
        retry_after: int = 1,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            message, status_code=status_code, headers={"Retry-After": str(retry_after)} if headers is None else headers
        )


class QueueFullError(IPCError):
    """The main process's bounded request queue stayed full for longer than ``queue_timeout``."""

    status_code = 503

    def __init__(self, message: str, *, status_code: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, status_code=status_code, headers={"Retry-After": "1"} if headers is None else headers)


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

    def __init__(self, message: str, status_code: int | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, status_code=status_code, headers=headers)


class StreamOverflowError(IPCError):
    """A stream's client read more slowly than the main process wrote, its buffer filled, and
    no ``merge`` function was given to fold chunks together (or ``merge_text``'s bound was passed)."""

    status_code = 503


# The errors that cross a pipe or a socket as (class name, message, status, headers).
_BY_NAME: dict[str, type[IPCError]] = {
    cls.__name__: cls
    for cls in (
        ChannelClosedError,
        DuplicateRequestIdError,
        OverloadedError,
        QueueFullError,
        RemoteError,
        ReplyTooLargeError,
    )
}


def from_wire(
    name: str, message: str, status_code: int | None = None, headers: dict[str, str] | None = None
) -> IPCError:
    """The error the other side sent as plain data, rebuilt as the class ``name`` names (an
    ``IPCError`` for a name this side does not know), with its message, status and headers
    (``None``: the class's own)."""
    return _BY_NAME.get(name, IPCError)(message, status_code=status_code, headers=headers)
