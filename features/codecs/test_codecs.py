"""Codecs: pickle by default; msgspec carries only declared types, is safe to decode, and fails
one request (not the server) when a message can't be encoded or decoded."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("msgspec", reason="this slice needs msgspec: pip install 'isolated_api[msgspec]'")

import msgspec

from isolated_api import (
    CancelRequest,
    CodecError,
    ConfigError,
    ErrorReply,
    MsgspecCodec,
    PickleCodec,
)
from isolated_api.testing import MainLoop, loopback_builder, running

from .codec_messages import Answer, Ask, Untagged, ask_route, bad_id_route


def test_codecs_msgspec_round_trips_declared_types_and_framework_messages() -> None:
    codec = MsgspecCodec(Ask, Answer)
    assert codec.decode(codec.encode(Ask("1", "hi", [4]))) == Ask("1", "hi", [4])
    assert codec.decode(codec.encode(ErrorReply("2", "no", 404))) == ErrorReply("2", "no", 404)
    assert codec.decode(codec.encode(CancelRequest(3, "timeout"))) == CancelRequest(3, "timeout")
    restored = pickle.loads(pickle.dumps(codec))
    assert restored == codec and restored.decode(codec.encode(Answer("4", "x", 1))) == Answer("4", "x", 1)
    # Several replies in one message (ReplyBatcher), framework messages among them.
    bundle = [Answer("5", "y", 2), ErrorReply("6", "bad", 400)]
    assert codec.decode(codec.encode(bundle)) == bundle


def test_codecs_msgspec_refuses_what_it_cannot_carry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tag=True"):
        MsgspecCodec(Untagged)
    with pytest.raises(ConfigError, match=r"msgspec\.Struct"):
        MsgspecCodec(dict)
    with pytest.raises(ConfigError, match="types"):
        MsgspecCodec()
    codec = MsgspecCodec(Ask)
    with pytest.raises(CodecError, match="could not be encoded"):
        codec.encode(Ask("1", "x", [object()]))  # type: ignore[list-item]
    with pytest.raises(CodecError, match="could not be decoded"):
        codec.decode(b"\xc1garbage")
    # A pickle that would run code when unpickled is just undecodable bytes to msgspec.
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))
    with pytest.raises(CodecError):
        codec.decode(evil)
    assert not marker.exists()
    with pytest.raises(CodecError, match="str or int"):
        codec.encode(ErrorReply(("tuple",), "x"))


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_codecs_pickle_reports_what_it_cannot_pickle() -> None:
    with pytest.raises(CodecError, match="could not be pickled"):
        PickleCodec().encode(lambda: None)


def _msgspec_server(queues: tuple[Any, Any], timeout: float = 10.0) -> Any:
    return (
        loopback_builder("msgspec", timeout)
        .routes.with_route("/ask", ask_route, methods=["POST"])
        .with_route("/bad-id", bad_id_route)
        .done()
        .subprocess.with_ipc(*queues)
        .with_codec(MsgspecCodec(Ask, Answer))
        .done()
        .build()
    )


def test_codecs_msgspec_end_to_end_the_queues_carry_bytes(queues: tuple[Any, Any]) -> None:
    """Steps: a server with MsgspecCodec; the main loop gets bytes from request_q, decodes them
    with server.codec and puts encoded bytes (or, once, a plain ErrorReply object) back. Expect
    the answers over HTTP, and a request that can't be encoded failing alone with 500."""
    server = _msgspec_server(queues)
    codec = server.codec
    seen: list[Any] = []

    def behaviour(raw: Any) -> Any:
        seen.append(raw)
        ask = codec.decode(raw)
        if ask.text == "refuse":
            return ErrorReply(ask.id, "refused", 418)  # an object: encoded on its way to the worker
        return codec.encode(Answer(ask.id, ask.text.upper(), sum(ask.numbers)))

    loop = MainLoop(*queues, behaviour).start()
    try:
        with running(server) as url:
            response = httpx.post(f"{url}/ask", json={"text": "hi"}, timeout=10)
            assert response.json() == {"text": "HI", "total": 6}
            assert all(isinstance(raw, bytes) for raw in seen)
            refused = httpx.post(f"{url}/ask", json={"text": "refuse"}, timeout=10)
            assert refused.status_code == 418 and refused.json() == {"detail": "refused"}
            bad = httpx.get(f"{url}/bad-id", timeout=10)
            assert bad.status_code == 500 and "str or int" in bad.json()["detail"]
            assert httpx.post(f"{url}/ask", json={"text": "still"}, timeout=10).json()["text"] == "STILL"
    finally:
        loop.stop()


def test_codecs_msgspec_undecodable_reply_is_dropped_not_fatal(queues: tuple[Any, Any]) -> None:
    """A reply the relay can't decode: with a readable id its request fails at once with 500 and
    the reason; without one it is dropped and counted and its request times out (504); the next
    request is served either way."""
    server = _msgspec_server(queues, timeout=1.0)
    codec = server.codec

    def behaviour(raw: Any) -> Any:
        ask = codec.decode(raw)
        if ask.text == "garbage":
            return b"\xc1 not msgpack"
        if ask.text == "wrong type":
            return msgspec.msgpack.encode({"id": ask.id, "type": "NotDeclared"})
        return codec.encode(Answer(ask.id, "ok", 0))

    loop = MainLoop(*queues, behaviour).start()
    try:
        with running(server) as url:
            assert httpx.post(f"{url}/ask", json={"text": "garbage"}, timeout=10).status_code == 504
            assert server.ipc.dropped_count == 1
            wrong = httpx.post(f"{url}/ask", json={"text": "wrong type"}, timeout=10)
            assert wrong.status_code == 500 and "could not be decoded" in wrong.json()["detail"]
            assert httpx.post(f"{url}/ask", json={"text": "fine"}, timeout=10).json()["text"] == "ok"
    finally:
        loop.stop()
