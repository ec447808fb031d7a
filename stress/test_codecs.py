"""Codecs side by side: encode + decode of a typical request and reply, small and 64 KB, with
pickle (the default) and msgspec (MessagePack). Both run here, in this process, so only the codec
differs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import pytest

from isolated_api.shared.codecs import Codec, MsgspecCodec, PickleCodec
from stress.figures import Figures

pytestmark = pytest.mark.stress


class Request(msgspec.Struct, tag=True):
    id: str
    prompt: str
    max_tokens: int
    temperature: float
    stop: list[str]


class Reply(msgspec.Struct, tag=True):
    id: str
    text: str
    tokens: int
    finish_reason: str


@dataclass
class RequestDC:
    id: str
    prompt: str
    max_tokens: int
    temperature: float
    stop: list[str]


@dataclass
class ReplyDC:
    id: str
    text: str
    tokens: int
    finish_reason: str


def _round_trip(codec: Codec, request: object, reply: object) -> Callable[[], object]:
    def action() -> object:
        return codec.decode(codec.encode(request)) and codec.decode(codec.encode(reply))

    return action


def _per_op_us(action: Callable[[], object], budget: float = 0.5) -> float:
    """Median over 5 rounds of the mean time of one call, in microseconds."""
    rounds: list[float] = []
    for _ in range(5):
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < budget / 5:
            for _ in range(100):
                action()
            count += 100
        rounds.append(elapsed / count * 1e6)
    return sorted(rounds)[2]


def test_codecs_pickle_versus_msgspec(figures: Figures) -> None:
    # pickle is measured on dataclasses (what users send with it) and on the same Structs.
    codecs: dict[str, tuple[Codec, type, type]] = {
        "pickle (dataclass)": (PickleCodec(), RequestDC, ReplyDC),
        "pickle (Struct)": (PickleCodec(), Request, Reply),
        "msgspec (Struct)": (MsgspecCodec(Request, Reply), Request, Reply),
    }
    sizes = {
        "small": ("Tell me about queues.", "Queues hand messages between processes."),
        "64 KB": ("x" * 65536, "y" * 65536),
    }
    rows: list[list[str]] = []
    for size, (prompt, text) in sizes.items():
        timings = {}
        for name, (codec, request_type, reply_type) in codecs.items():
            request, reply = request_type("a" * 32, prompt, 256, 0.7, ["\n\n"]), reply_type("a" * 32, text, 7, "stop")
            encoded_request, encoded_reply = codec.encode(request), codec.encode(reply)
            assert codec.decode(encoded_request) == request and codec.decode(encoded_reply) == reply
            timings[name] = _per_op_us(_round_trip(codec, request, reply))
            rows.append([size, name, f"{len(encoded_request)}", f"{len(encoded_reply)}", f"{timings[name]:.2f}"])
        ratio = timings["msgspec (Struct)"] / timings["pickle (dataclass)"]
        rows.append([size, "msgspec / pickle (dataclass)", "", "", f"{ratio:.2f}x"])
    figures.table(
        "codecs: encode+decode of one request and one reply (us, median of 5)",
        ["payload", "codec", "request bytes", "reply bytes", "us per round trip"],
        rows,
    )
