"""What the link asks of a codec beyond ``encode``/``decode``: request ids framed on their own
(``encode_id``/``decode_id``) and control messages (``encode_control``/``decode_control``).
Moved from features/codecs, whose tests keep to what a user calls."""

from __future__ import annotations

import msgspec

from isolated_api import MsgspecCodec, PickleCodec


class Ask(msgspec.Struct, tag=True):
    id: str
    text: str
    numbers: list[int] = []


class Answer(msgspec.Struct, tag=True):
    id: str
    text: str
    total: int


def test_codecs_control_messages_round_trip_with_lists_back_as_tuples() -> None:
    codec = MsgspecCodec(Ask, Answer)
    assert codec.decode_control(codec.encode_control(("id", ["a", 1]))) == ("id", ("a", 1))


def test_codecs_ids_round_trip_whatever_their_type() -> None:
    """Steps: encode_id/decode_id on str (with a lone surrogate), int, tuple, None. Expect the same
    value back; str and int without a pickle (tag byte first), the rest pickled."""
    codec = PickleCodec()
    for request_id in ("abc", "lone \udc80", 0, -12345678901234567890, ("a", 1), None):
        encoded = codec.encode_id(request_id)
        assert codec.decode_id(encoded) == request_id
        assert (encoded[:1] in (b"s", b"i")) == (type(request_id) in (str, int))
    msgspec_codec = MsgspecCodec(Ask, Answer)
    assert msgspec_codec.decode_id(msgspec_codec.encode_id("x")) == "x"
    assert msgspec_codec.decode_id(msgspec_codec.encode_id(7)) == 7
