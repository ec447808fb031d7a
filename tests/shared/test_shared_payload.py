"""The arena codec alone (``shared/shared_payload.py``, ``shared/arena.py``), in one process: any
mix of large and small buffers round-trips through a real memfd arena, whatever fits; the slots
are free once decoded; a handle outside the request region is refused before anything is read."""

from __future__ import annotations

import os
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolated_api.shared import shared_payload
from isolated_api.shared.arena import BUSY, SLOTS, Arena, SlotAllocator, available
from isolated_api.shared.codecs import PickleCodec
from isolated_api.shared.framing import ProtocolError

pytestmark = pytest.mark.skipif(not available(), reason="no os.memfd_create on this system")

KiB = 1024


def _arena(size: int = 2 * 1024 * KiB) -> Arena:
    arena, child_fd = Arena.create(size)
    os.close(child_fd)
    return arena


def _round_trip(obj: Any, arena: Arena, allocator: SlotAllocator, min_size: int = 64 * KiB) -> Any:
    encoded = shared_payload.encode(PickleCodec(), obj, None, arena, allocator, min_size)
    if not isinstance(encoded, shared_payload.Encoded):
        return pickle.loads(encoded), 0
    wire = memoryview(b"".join((encoded.head, *encoded.parts)))
    segments, inline = shared_payload.parse(wire, arena, trusted=False)
    return shared_payload.decode(PickleCodec(), segments, inline, arena), len(segments)


_buffers = st.one_of(
    st.integers(0, 300 * KiB).map(lambda n: bytes([n % 251]) * n),
    st.integers(0, 200 * KiB).map(lambda n: bytearray(b"x" * n)),
    st.integers(0, 100 * KiB).map(lambda n: "é" * n),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_buffers, max_size=12))
def test_shared_payload_any_mix_round_trips_and_frees_its_slots(items: list[Any]) -> None:
    arena = _arena()
    try:
        allocator = SlotAllocator(arena, arena.up, 0)
        message = {"items": items, "tail": b"t" * 70 * KiB}
        decoded, _ = _round_trip(message, arena, allocator)
        assert decoded == message
        assert [type(item) for item in decoded["items"]] == [type(item) for item in items]
        assert BUSY not in arena.states()
    finally:
        arena.close()


def test_shared_payload_memoryviews_arrive_as_memoryviews_of_their_own_bytes() -> None:
    arena = _arena()
    try:
        source = bytearray(b"m" * 100 * KiB)
        decoded, in_arena = _round_trip({"view": memoryview(source)}, arena, SlotAllocator(arena, arena.up, 0))
        assert in_arena == 1 and type(decoded["view"]) is memoryview and decoded["view"] == source
        source[0] = 0  # the copy is the receiver's own
        assert decoded["view"][0] == ord("m")
    finally:
        arena.close()


def test_shared_payload_a_full_region_keeps_the_rest_in_band() -> None:
    """Three 400 KiB buffers and a region of ~1 MiB: two go in the arena, the third stays in the
    stream, and all three arrive."""
    arena = _arena(2 * 1024 * KiB + 4096)
    try:
        message = [bytes([n]) * 400 * KiB for n in range(3)]
        decoded, in_arena = _round_trip(message, arena, SlotAllocator(arena, arena.up, 0))
        assert decoded == message and in_arena == 2
    finally:
        arena.close()


def test_shared_payload_handles_outside_the_request_region_are_refused() -> None:
    arena = _arena()
    try:
        allocator = SlotAllocator(arena, arena.down, SLOTS)  # a reply region's handle, as if a request's
        encoded = shared_payload.encode(PickleCodec(), b"r" * 100 * KiB, None, arena, allocator, 64 * KiB)
        assert isinstance(encoded, shared_payload.Encoded)
        wire = memoryview(b"".join((encoded.head, *encoded.parts)))
        with pytest.raises(ProtocolError, match="forged"):
            shared_payload.parse(wire, arena, trusted=False)
        with pytest.raises(ProtocolError):
            shared_payload.parse(memoryview(b"\x00\x05" + b"\x00" * 10), arena, trusted=False)
    finally:
        arena.close()
