"""``from_wire``: an error sent over a pipe or a socket as plain data comes back as the same class,
with the same message, status and headers, through the class's own ``__init__``."""

from __future__ import annotations

import pytest

from isolated_api.shared import errors


@pytest.mark.parametrize(
    "sent",
    [
        errors.ChannelClosedError("the server is not running"),
        errors.DuplicateRequestIdError("request id 'a' is already awaiting a reply"),
        errors.OverloadedError("server busy", retry_after=7, status_code=429),
        errors.QueueFullError("the main process's request queue stayed full"),
        errors.RemoteError("no such model", 404),
        errors.ReplyTooLargeError("the reply is over the cap"),
    ],
)
def test_errors_from_wire_rebuilds_the_class_message_status_and_headers(sent: errors.IPCError) -> None:
    got = errors.from_wire(type(sent).__name__, sent.message, sent.status_code, sent.headers)
    assert type(got) is type(sent)
    assert (got.message, got.status_code, got.headers) == (sent.message, sent.status_code, sent.headers)


def test_errors_from_wire_an_unknown_name_is_an_ipc_error_and_no_status_is_the_class_default() -> None:
    unknown = errors.from_wire("SomeNewerError", "from a newer peer", 418, {"X-Why": "tea"})
    assert type(unknown) is errors.IPCError
    assert (unknown.message, unknown.status_code, unknown.headers) == ("from a newer peer", 418, {"X-Why": "tea"})
    full = errors.from_wire("QueueFullError", "full")
    assert (full.status_code, full.headers) == (503, {"Retry-After": "1"})
    busy = errors.from_wire("OverloadedError", "busy")
    assert (busy.status_code, busy.headers) == (503, {"Retry-After": "1"})
