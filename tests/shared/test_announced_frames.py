"""Large frames announced and sent in parts (head-of-line, issue 28): small frames may pass one
between its parts, the reader gathers it whole, and a peer that breaks the rules is refused."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolated_api.shared.framing import (
    _HEADER,
    PART_SIZE,
    SIZED_FRAME,
    Announced,
    FrameDecoder,
    FrameReader,
    FrameTooLarge,
    Kind,
    ProtocolError,
    frame,
)
from tests.helpers import decode_cut


def _units(announced: Announced) -> list[bytes]:
    units = []
    while not announced.done:
        units.append(b"".join(announced.next_unit()))
    return units


def test_announced_frame_is_a_begin_then_parts_cut_from_the_callers_buffers() -> None:
    """Steps: a 1.3 MB frame of three pieces. Expect a BEGIN giving its length and kind, parts of
    at most PART_SIZE, the pieces' bytes as views of the pieces themselves (no copy), and the
    bytes on the pipe adding up to ``wire_size``."""
    pieces = [b"h" * 100, os.urandom(PART_SIZE + 5), os.urandom(800_000)]
    announced = Announced(Kind.REPLY, list(pieces))
    first = announced.next_unit()
    assert first[0] == frame(Kind.BEGIN, _HEADER.pack(sum(map(len, pieces)), Kind.REPLY))
    assert _HEADER.unpack(first[1]) == (PART_SIZE, Kind.PART)
    assert all(isinstance(view, memoryview) and view.obj in pieces for view in first[2:])
    units = [b"".join(first), *_units(announced)]
    assert sum(map(len, units)) == announced.wire_size
    decoder = FrameDecoder()
    out = [frame for unit in units for frame in decoder.feed(unit)]
    assert out == [(Kind.REPLY, bytearray(b"".join(pieces)))]


_SMALL = st.binary(min_size=0, max_size=300)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """(the stream's frames as written, the bodies the reader must hand on, in that order)."""
    written: list[bytes] = []
    expected: list[bytes] = []
    for _ in range(draw(st.integers(1, 4))):
        what = draw(st.sampled_from(["small", "whole", "announced"]))
        if what == "small":
            body = draw(_SMALL)
            written.append(frame(Kind.REPLY, body))
            expected.append(body)
            continue
        size = draw(st.sampled_from([SIZED_FRAME, SIZED_FRAME + 1, 200_000, PART_SIZE, PART_SIZE + 1, 1_200_000]))
        body = bytes([len(written) % 251]) * size
        if what == "whole":
            written.append(frame(Kind.REPLY, body))
            expected.append(body)
            continue
        announced = Announced(Kind.REPLY, [body])
        while not announced.done:
            written.append(b"".join(announced.next_unit()))
            if announced.done:
                break
            for small in draw(st.lists(_SMALL, max_size=2)):  # small frames between its parts
                written.append(frame(Kind.REPLY, small))
                expected.append(small)
        expected.append(body)
    return written, expected


@settings(max_examples=80, deadline=None)
@given(
    stream=_streams(),
    cuts=st.lists(st.integers(min_value=1, max_value=700_000), max_size=30),
    direct=st.booleans(),
)
def test_announced_frames_come_out_whole_after_the_small_frames_that_passed_them(
    stream: tuple[list[bytes], list[bytes]], cuts: list[int], direct: bool
) -> None:
    """Small frames, frames sent whole and announced frames with small frames between their
    parts, cut anywhere (a cut may end inside a header), fed or, where the decoder asks for it,
    read straight into its buffer. Expect every body whole, the small ones as they arrive and each
    announced one when its last part has."""
    written, expected = stream
    data = b"".join(written)
    decoder = FrameDecoder(max_frame=1 << 21)
    out = decode_cut(decoder, data, cuts, direct)
    assert out == expected
    assert not decoder.has_partial_frame


def _begin(length: int, kind: int = Kind.REPLY) -> bytes:
    return frame(Kind.BEGIN, _HEADER.pack(length, kind))


def _part(body: bytes) -> bytes:
    return frame(Kind.PART, body)


@pytest.mark.parametrize(
    ("stream", "refused"),
    [
        (_part(b"x" * 10), "no large frame announced"),
        (_begin(SIZED_FRAME) + _part(b"x" * (SIZED_FRAME + 1)), "past the end"),
        (_begin(SIZED_FRAME) + _part(b""), "past the end"),
        (_begin(SIZED_FRAME) + _begin(SIZED_FRAME), "while an announced one"),
        (_begin(SIZED_FRAME) + frame(Kind.REPLY, b"x" * SIZED_FRAME), "while an announced one"),
        (_begin(SIZED_FRAME, Kind.PART), "of kind 16"),
        (_begin(SIZED_FRAME, 99), "of kind 99"),
        (_begin(100), "under the"),
        (_HEADER.pack(6, Kind.BEGIN) + b"x" * 6, "not 5"),
    ],
    ids=[
        "part-unannounced",
        "part-past-end",
        "empty-part",
        "begin-twice",
        "whole-inside",
        "begin-of-part",
        "begin-unknown",
        "begin-small",
        "begin-malformed",
    ],
)
def test_announced_frames_a_peer_breaking_the_rules_is_refused(stream: bytes, refused: str) -> None:
    """Steps: each way of breaking the parts' rules, fed whole and a byte at a time. Expect a
    ProtocolError naming it."""
    with pytest.raises(ProtocolError, match=refused):
        FrameDecoder().feed(stream)
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=refused):
        for byte in stream:
            decoder.feed(bytes([byte]))


def test_announced_frames_an_announcement_over_the_cap_is_refused_before_any_buffer() -> None:
    """Steps: a BEGIN announcing 1 GiB to a decoder capped at 1 MiB. Expect FrameTooLarge at once."""
    with pytest.raises(FrameTooLarge, match="announced, over the cap"):
        FrameDecoder(max_frame=1 << 20).feed(_begin(1 << 30))


@settings(max_examples=25, deadline=None)
@given(stream=_streams(), writes=st.lists(st.integers(min_value=1, max_value=300_000), max_size=20))
def test_announced_frames_a_frame_reader_gets_them_through_a_real_pipe(
    stream: tuple[list[bytes], list[bytes]], writes: list[int]
) -> None:
    """The same streams, written into a real pipe in writes of any size by another thread, read
    with ``FrameReader`` (reused read buffer, parts read in place, a header first between parts).
    Expect the same bodies in the same order, then end-of-file."""
    written, expected = stream
    data = b"".join(written)
    read_fd, write_fd = os.pipe()

    def write_all() -> None:
        view, sizes = memoryview(data), iter(writes)
        while view:
            step = next(sizes, len(view))
            view = view[os.write(write_fd, view[:step]) :]
        os.close(write_fd)

    writer = threading.Thread(target=write_all)
    writer.start()
    reader = FrameReader(read_fd, 1 << 16)
    out: list[bytes] = []
    try:
        while True:
            count, frames = reader.read()
            out += [bytes(body) for _, body in frames]
            if not count:
                break
    finally:
        writer.join(30)
        os.close(read_fd)
    assert out == expected
    assert not reader.decoder.has_partial_frame
