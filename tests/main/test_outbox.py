"""The outbox of one worker's pipe: never blocks its writer, keeps order, and declares a peer that
stops reading stalled (bound or deadline), once."""

from __future__ import annotations

import os
import threading

from isolated_api.main.outbox import Outbox
from isolated_api.shared.config import OutboxLimits
from isolated_api.shared.framing import Announced, FrameDecoder, Kind, frame, frame_head
from isolated_api.testing import wait_until


def _read_all(fd: int, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_outbox_queues_what_a_full_pipe_refuses_and_sends_it_in_order_once_read() -> None:
    """Steps: a peer that does not read; write 1 MiB in 16 pieces, then read everything. Expect:
    every write returned at once (the pipe holds 64 KiB), the bytes arrive whole and in order,
    and nothing is left waiting."""
    r, w = os.pipe()
    stalls: list[str] = []
    outbox = Outbox(w, name="t", limits=OutboxLimits(stall_timeout=30.0), on_stalled=stalls.append)
    try:
        pieces = [bytes([i]) * (1 << 16) for i in range(16)]
        for piece in pieces:
            assert outbox.write(piece)
        assert outbox.pending_bytes > 0 and outbox.deferred_writes > 0
        assert _read_all(r, 1 << 20) == b"".join(pieces)
        wait_until(lambda: outbox.pending_bytes == 0, 10, "the outbox to empty")
        assert stalls == []
    finally:
        outbox.close()
        os.close(r)
        os.close(w)


def test_outbox_declares_a_peer_that_reads_nothing_stalled_once_after_the_deadline() -> None:
    """Steps: a peer that never reads; fill the pipe and queue more; wait. Expect on_stalled once,
    naming the deadline; later writes refused (False), never blocking."""
    r, w = os.pipe()
    stalled = threading.Event()
    reasons: list[str] = []

    def on_stalled(why: str) -> None:
        reasons.append(why)
        stalled.set()

    outbox = Outbox(w, name="t", limits=OutboxLimits(stall_timeout=0.3), on_stalled=on_stalled)
    try:
        assert outbox.write(b"x" * (1 << 18))
        assert stalled.wait(10)
        assert not outbox.write(b"more")
        assert len(reasons) == 1 and "took nothing" in reasons[0]
        assert outbox.pending_bytes == 0
    finally:
        os.close(r)
        os.close(w)


def test_outbox_declares_a_peer_stalled_when_more_than_the_bound_piles_up() -> None:
    """Steps: bound 256 KiB; a peer that never reads; a 1 MiB write (the write in progress), a
    second 1 MiB write behind it (accepted: nothing waited behind the first), then 1 KiB. Expect
    the last refused and on_stalled called once with the bound."""
    r, w = os.pipe()
    reasons: list[str] = []
    limits = OutboxLimits(max_queued_bytes=1 << 18, stall_timeout=30.0)
    outbox = Outbox(w, name="t", limits=limits, on_stalled=reasons.append)
    try:
        assert outbox.write(b"a" * (1 << 20))
        assert outbox.write(b"b" * (1 << 20))
        assert not outbox.write(b"c" * 1024)
        assert len(reasons) == 1 and "over the bound" in reasons[0]
    finally:
        outbox.close()
        os.close(r)
        os.close(w)


def test_outbox_one_write_larger_than_the_bound_is_not_a_stall_of_a_reading_peer() -> None:
    """Issue 28: a reply larger than the bound, with small replies written behind it while it
    drains, goes out whole to a peer that reads. Steps: bound 256 KiB; an 8 MiB write, then 20
    small writes while nothing was read yet; then read everything. Expect: every write accepted,
    the bytes in order, no stall (before: "8323072 bytes waiting ... over the bound")."""
    r, w = os.pipe()
    reasons: list[str] = []
    limits = OutboxLimits(max_queued_bytes=1 << 18, stall_timeout=30.0)
    outbox = Outbox(w, name="t", limits=limits, on_stalled=reasons.append)
    try:
        big = b"B" * (8 << 20)
        smalls = [bytes([i]) * 100 for i in range(20)]
        assert outbox.write(big)
        for small in smalls:
            assert outbox.write(small)
        expected = big + b"".join(smalls)
        assert _read_all(r, len(expected)) == expected
        wait_until(lambda: outbox.pending_bytes == 0, 10, "the outbox to empty")
        assert reasons == []
    finally:
        outbox.close()
        os.close(r)
        os.close(w)


def test_outbox_write_to_a_closed_peer_is_dropped_not_raised() -> None:
    r, w = os.pipe()
    os.close(r)
    outbox = Outbox(w, name="t", limits=OutboxLimits(), on_stalled=lambda why: None)
    try:
        assert not outbox.write(b"nobody reads")
        assert not outbox.write(b"still nobody")
    finally:
        os.close(w)


def _frames(data: bytes) -> list[tuple[Kind, bytes]]:
    return [(kind, bytes(body)) for kind, body in FrameDecoder().feed(data)]


def test_outbox_small_replies_pass_a_large_one_between_its_parts_unless_they_answer_the_same_request() -> None:
    """Head-of-line (issue 28). Steps: a peer that does not read yet; a 4 MiB reply frame for
    request "a", then small replies for "b", for "a" (its stream's next item), for "c", and a
    control frame; then read everything and decode it. Expect the small replies for "b" and "c"
    and the control frame to arrive before the 4 MiB one, and the one for "a" after it; the large
    one whole; nothing left waiting."""
    r, w = os.pipe()
    outbox = Outbox(w, name="t", limits=OutboxLimits(stall_timeout=30.0), on_stalled=lambda why: None)
    try:
        large = os.urandom(4 << 20)
        assert outbox.write_frame([frame_head(Kind.REPLY, b"a:", len(large)), large], keys=frozenset({"a"}))
        assert outbox.write(frame(Kind.REPLY, b"b:1"), keys=frozenset({"b"}))
        assert outbox.write(frame(Kind.REPLY, b"a:next"), keys=frozenset({"a"}))
        assert outbox.write(frame(Kind.REPLY, b"c:1"), keys=frozenset({"c", "d"}))
        assert outbox.write(frame(Kind.PONG, b"pong"))
        expected_size = Announced(Kind.REPLY, [b"a:", large]).wire_size + 4 * 5 + 3 + 6 + 3 + 4
        frames = _frames(_read_all(r, expected_size))
        assert frames == [
            (Kind.REPLY, b"b:1"),
            (Kind.REPLY, b"c:1"),
            (Kind.PONG, b"pong"),
            (Kind.REPLY, b"a:" + large),
            (Kind.REPLY, b"a:next"),
        ]
        wait_until(lambda: outbox.pending_bytes == 0, 10, "the outbox to empty")
    finally:
        outbox.close()
        os.close(r)
        os.close(w)


def test_outbox_a_second_large_reply_waits_for_the_first_and_nothing_passes_a_write_it_must_follow() -> None:
    """Steps: a peer that does not read yet; a 2 MiB reply for "a", a 1 MiB one for "b", a small
    one for "b" and a small one for "e". Expect "e" first; then the two large ones in order (one
    announced frame at a time on a pipe), then the small one for "b" behind its large one."""
    r, w = os.pipe()
    outbox = Outbox(w, name="t", limits=OutboxLimits(stall_timeout=30.0), on_stalled=lambda why: None)
    try:
        first, second = os.urandom(2 << 20), os.urandom(1 << 20)
        assert outbox.write_frame([frame_head(Kind.REPLY, b"a:", len(first)), first], keys=frozenset({"a"}))
        assert outbox.write_frame([frame_head(Kind.REPLY, b"b:", len(second)), second], keys=frozenset({"b"}))
        assert outbox.write(frame(Kind.REPLY, b"b:1"), keys=frozenset({"b"}))
        assert outbox.write(frame(Kind.REPLY, b"e:1"), keys=frozenset({"e"}))
        size = sum(Announced(Kind.REPLY, [b"x:", body]).wire_size for body in (first, second)) + 2 * 8
        frames = _frames(_read_all(r, size))
        assert frames == [
            (Kind.REPLY, b"e:1"),
            (Kind.REPLY, b"a:" + first),
            (Kind.REPLY, b"b:" + second),
            (Kind.REPLY, b"b:1"),
        ]
    finally:
        outbox.close()
        os.close(r)
        os.close(w)
