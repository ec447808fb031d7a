"""The engine with MsgspecCodec end to end: requests arrive as MessagePack bytes, replies leave as
bytes the HTTP child decodes into the engine's wire types; an unencodable reply fails only its
own request."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytest.importorskip("msgspec", reason="this slice needs msgspec: pip install 'isolated_api[msgspec]'")

from isolated_api import ENGINE_WIRE_TYPES, Engine, MsgspecCodec
from isolated_api.testing import loopback_builder, running

from .wire_jobs import Shout, Spell, shout, shout_route, spell, spell_route


def test_engine_wire_msgspec_codec_serves_unary_and_streams(queues: tuple[Any, Any]) -> None:
    """Steps: a server and an engine sharing MsgspecCodec(Shout, Spell, *ENGINE_WIRE_TYPES).
    Expect the reply as ResultWire with its data, a stream of letters ending with a final chunk,
    a 500 with an error id (the encoding problem stays in the log) for a reply MessagePack can't
    carry, and the engine still serving afterwards."""
    codec = MsgspecCodec(Shout, Spell, *ENGINE_WIRE_TYPES)
    server = (
        loopback_builder("engine-wire")
        .routes.with_route("/shout", shout_route, methods=["POST"])
        .with_route("/spell", spell_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .with_codec(codec)
        .done()
        .build()
    )
    engine = Engine(*queues, codec=codec)
    engine.handle(Shout, shout)
    engine.handle(Spell, spell)
    with engine, running(server) as url, httpx.Client(base_url=url, timeout=10) as client:
        reply = client.post("/shout", json={"text": "hey"})
        assert reply.json() == {"type": "ResultWire", "data": {"text": "HEY", "length": 3}}
        stream = client.post("/spell", json={"word": "abc"}).json()
        assert stream == {"data": ["a", "b", "c", None], "final": [False, False, False, True]}
        broken = client.post("/shout", json={"text": "opaque"})
        assert broken.status_code == 500 and broken.json()["detail"].startswith("internal error (error id ")
        assert client.post("/shout", json={"text": "ok"}).json()["data"]["text"] == "OK"
