"""A pong carries whether the engine's loop reads its queue, and still decodes without it (a host
from before those fields, or a queue that can't count)."""

from __future__ import annotations

import json

from isolated_api.shared import remote_wire

_BOOT = "ab" * remote_wire.BOOT_ID_SIZE


def _pong(
    unread: int | None = None, unread_age: float | None = None, read_quiet_age: float | None = None
) -> remote_wire.Pong:
    return remote_wire.Pong(
        seq=1,
        boot=_BOOT,
        pending=2,
        capacity=0,
        oldest_pending_age=3.0,
        last_reply_age=3.0,
        unanswered_age=0.0,
        unread=unread,
        unread_age=unread_age,
        read_quiet_age=read_quiet_age,
    )


def test_remote_wire_pong_carries_the_reads_of_the_engines_loop() -> None:
    pong = _pong(unread=1, unread_age=2.5, read_quiet_age=2.0)
    decoded = remote_wire.decode_pong(remote_wire.encode_pong(pong))
    assert (decoded.unread, decoded.unread_age, decoded.read_quiet_age) == (1, 2.5, 2.0)
    assert decoded.facts()["unread_age"] == 2.5


def test_remote_wire_pong_without_reads_decodes_to_none() -> None:
    unknown = remote_wire.encode_pong(_pong())
    assert "unread" not in json.loads(unknown)
    decoded = remote_wire.decode_pong(unknown)
    assert (decoded.unread, decoded.unread_age, decoded.read_quiet_age) == (None, None, None)
