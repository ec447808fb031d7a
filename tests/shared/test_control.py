"""Control frames from a worker: JSON with a schema, capped; anything else is a ProtocolError."""

from __future__ import annotations

import pickle
import struct

import pytest

from isolated_api.shared import control
from isolated_api.shared.codecs import PickleCodec
from isolated_api.shared.framing import (
    FrameDecoder,
    FrameTooLarge,
    Kind,
    ProtocolError,
    frame,
    request_frame,
    split_request,
)


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_control_frames_round_trip() -> None:
    codec = PickleCodec()
    assert control.decode_ready(control.encode_ready(12, 8000)) == {"pid": 12, "port": 8000}
    assert control.decode_probe(control.encode_probe(3, "facts")) == (3, "facts")
    assert control.decode_cancel(control.encode_cancel("a-1", "timeout", codec.encode_id), codec.decode_id) == (
        "a-1",
        "timeout",
    )
    report = {"http": [(("GET", "/x/{id}", 200), 3)], "rejected": 1, "dropped": 0}
    assert control.decode_metrics(control.encode_metrics(report)) == report


@pytest.mark.parametrize(
    "decode",
    [control.decode_ready, control.decode_probe, control.decode_metrics],
)
def test_control_frames_refuse_a_pickle(decode: object) -> None:
    """A worker sending a pickle where JSON belongs: refused, never unpickled."""
    with pytest.raises(ProtocolError):
        decode(pickle.dumps(_Boom()))  # type: ignore[operator]


def test_control_frames_refuse_out_of_schema_values() -> None:
    with pytest.raises(ProtocolError):
        control.decode_probe(b'[1, "exec"]')
    with pytest.raises(ProtocolError):
        control.decode_ready(b'{"pid": "1", "port": 2}')
    with pytest.raises(ProtocolError):
        control.decode_metrics(b'{"http": [["GET", "/", 999, 1]], "rejected": 0, "dropped": 0}')
    rows = [["GET", f"/r{i}", 200, 1] for i in range(control.LIMITS.max_metric_labels + 1)]
    with pytest.raises(ProtocolError, match="label sets"):
        control.decode_metrics(control._dump({"http": rows, "rejected": 0, "dropped": 0}))


def test_frame_decoder_refuses_a_frame_over_its_cap_before_buffering_it() -> None:
    """A header claiming 4 GiB: refused as soon as the header is read, with no body sent."""
    decoder = FrameDecoder(max_frame=1 << 20)
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack("!IB", 0xFFFFFFFF, Kind.REQUEST))
    assert FrameDecoder(max_frame=1 << 20).feed(frame(Kind.PROBE, b"x" * 100)) == [(Kind.PROBE, b"x" * 100)]


def test_request_frames_carry_id_origin_and_payload() -> None:
    codec = PickleCodec()
    data = request_frame(Kind.REQUEST, "id-1", b"POST /upper", b"payload", codec.encode_id)
    [(kind, body)] = FrameDecoder().feed(data)
    assert kind is Kind.REQUEST
    request_id, origin, payload = split_request(body, codec.decode_id)
    assert (request_id, origin, bytes(payload)) == ("id-1", "POST /upper", b"payload")
    with pytest.raises(ProtocolError):
        split_request(body[:8], codec.decode_id)
