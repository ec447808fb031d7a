"""``framing.dumps_parts`` (issue 28): the pieces a pickle is written as join to ``dumps``'s
bytes, and a large buffer is one of them by reference, never copied."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from isolated_api.shared.codecs import MsgspecCodec, PickleCodec, encode_parts
from isolated_api.shared.framing import dumps, dumps_parts, loads

_sizes = st.sampled_from([0, 1, 100, (64 << 10) - 1, 64 << 10, 200_000])


@dataclass
class Upload:
    id: str
    data: Any
    more: list[Any]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(_sizes, min_size=1, max_size=4), as_bytearray=st.booleans(), text=st.text(max_size=50))
def test_dumps_parts_join_to_the_pickle_and_unpickle_to_the_object(
    sizes: list[int], as_bytearray: bool, text: str
) -> None:
    """Property: for requests holding buffers of any size (bytes or bytearray) beside other
    fields, the pieces join to exactly ``dumps``'s bytes, and unpickle to an equal object."""
    buffers = [bytearray(os.urandom(size)) if as_bytearray else os.urandom(size) for size in sizes]
    request = Upload(text, buffers[0], buffers[1:])
    parts = dumps_parts(request)
    assert b"".join(parts) == dumps(request)
    assert loads(b"".join(parts)) == request


def test_dumps_parts_a_large_bytes_is_a_piece_by_reference_and_a_mutable_buffer_is_copied() -> None:
    """Steps: pickle a request holding 4 MiB of bytes and a 1 MiB bytearray, then change the
    bytearray. Expected: the bytes object itself is among the pieces (not a copy), the rest is
    small except the bytearray's copy, which still unpickles to the bytearray as it was when
    pickled (its owner may reuse it before the pipe has taken it)."""
    data, extra = os.urandom(4 << 20), bytearray(os.urandom(1 << 20))
    original = bytes(extra)
    parts = dumps_parts(Upload("x", data, [extra]))
    assert any(part is data for part in parts)
    assert not any(part is extra for part in parts)
    extra[:10] = b"0123456789"
    assert loads(b"".join(parts)) == Upload("x", data, [bytearray(original)])
    assert sum(len(part) for part in parts if part is not data) < len(extra) + 1024


def test_dumps_parts_encode_parts_is_one_piece_for_other_codecs() -> None:
    """Steps: encode_parts with pickle and with msgspec. Expected: pickle's pieces as above; a
    binary codec's encoding is one piece, equal to its encode."""
    import msgspec

    class Wire(msgspec.Struct, tag=True):
        data: bytes

    codec = MsgspecCodec(Wire)
    message = Wire(os.urandom(100_000))
    assert encode_parts(codec, message) == [codec.encode(message)]
    assert b"".join(encode_parts(PickleCodec(), Upload("y", b"z" * 100_000, []))) == dumps(
        Upload("y", b"z" * 100_000, [])
    )
