"""Large payloads: an 8 MiB octet-stream upload reaches the main process as ``bytes`` (no JSON,
no base64) and an 8 MiB binary reply comes back intact, read whole or streamed, with pickle and
msgspec, over the pipes and with shared payloads."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import httpx
import pytest

from isolated_api import Codec, PickleCodec
from isolated_api.testing import MainLoop, running

from .images import INVERT, OCTET_STREAM, Image, build, process

SIZE = 8 * 1024 * 1024


def _codec(name: str) -> Codec:
    if name == "pickle":
        return PickleCodec()
    pytest.importorskip("msgspec", reason="the msgspec half needs msgspec: pip install 'isolated_api[msgspec]'")
    from .wire import codec

    return codec()


def _behaviour(codec: Codec, seen: list[Any]) -> Any:
    def answer(request: Any) -> Any:
        seen.append(type(request))
        if isinstance(codec, PickleCodec):
            return process(request)
        from .wire import process_wire

        return process_wire(codec, request)  # type: ignore[arg-type]

    return answer


@pytest.mark.parametrize("shared", [False, True], ids=["pipes", "shared"])
@pytest.mark.parametrize("codec_name", ["pickle", "msgspec"])
def test_large_payloads_an_image_up_and_a_processed_image_back(
    queues: tuple[Any, Any], codec_name: str, shared: bool
) -> None:
    """Steps: an 8 MiB random "image" posted as application/octet-stream to /images and to
    /images/stream; the main process inverts every byte. Expect the main loop to get an ``Image``
    whose data is ``bytes`` (msgspec: the encoded bytes), and each answer to be
    application/octet-stream with the inverted bytes (sha256)."""
    codec = _codec(codec_name)
    seen: list[Any] = []
    loop = MainLoop(*queues, _behaviour(codec, seen)).start()
    builder = build(*queues, codec=codec, shared=shared)
    server = builder.with_host("127.0.0.1").with_port(0).with_timeout(30).build()
    image = os.urandom(SIZE)
    expected = hashlib.sha256(image.translate(INVERT)).hexdigest()
    try:
        with running(server) as url, httpx.Client(timeout=60) as client:
            for path in ("/images", "/images/stream"):
                answer = client.post(f"{url}{path}", content=image, headers={"content-type": OCTET_STREAM})
                assert answer.status_code == 200, answer.text
                assert answer.headers["content-type"] == OCTET_STREAM
                assert hashlib.sha256(answer.content).hexdigest() == expected
        assert seen == [Image, Image] if isinstance(codec, PickleCodec) else seen == [bytes, bytes]
        if isinstance(codec, PickleCodec):
            assert all(type(request.data) is bytes for request in loop.received)
    finally:
        loop.stop()


def test_large_payloads_over_the_body_limit_is_413(queues: tuple[Any, Any]) -> None:
    """A body over the slice's 32 MiB limit is refused with 413 before it reaches the main process."""
    loop = MainLoop(*queues, process).start()
    server = build(*queues).with_host("127.0.0.1").with_port(0).build()
    try:
        with running(server) as url:
            answer = httpx.post(f"{url}/images", content=b"\0" * (33 * 1024 * 1024), timeout=60)
            assert answer.status_code == 413
        assert loop.received == []
    finally:
        loop.stop()
