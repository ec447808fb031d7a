"""A 16 MiB request body and a 16 MiB reply cross the default path intact (sha256), with the pickle
and the msgspec codec: the frames read into one buffer and written in parts (issue 28 item 2)
carry every byte, in order, beside small requests in flight on the same worker."""

from __future__ import annotations

import hashlib
import os
import resource
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import Request

from isolated_api import IPC, Codec, MsgspecCodec, PickleCodec
from isolated_api.main.shared_requests import shared_counts
from isolated_api.testing import MainLoop, loopback_builder, running, spawn_queues

SIZE = 16 << 20


@dataclass
class Upload:
    id: str
    data: bytes


class WireUpload(msgspec.Struct, tag=True):
    id: str
    data: bytes


async def _echo(request: Request, channel: IPC, message: type[Upload] | type[WireUpload]) -> dict[str, Any]:
    """The body goes to the main process as bytes and comes back reversed."""
    reply = await channel.submit(message(os.urandom(8).hex(), await request.body()))
    return {"size": len(reply.data), "sha256": hashlib.sha256(reply.data).hexdigest()}


async def echo_pickle_route(request: Request, channel: IPC) -> dict[str, Any]:
    return await _echo(request, channel, Upload)


async def echo_msgspec_route(request: Request, channel: IPC) -> dict[str, Any]:
    return await _echo(request, channel, WireUpload)


def _behaviour(codec: Codec) -> Any:
    def answer(request: Any) -> Any:
        if isinstance(codec, MsgspecCodec):
            message = codec.decode(request)
            return codec.encode(WireUpload(message.id, message.data[::-1]))
        return Upload(request.id, request.data[::-1])

    return answer


@pytest.mark.parametrize("shared", [False, True], ids=["pipes", "shared"])
@pytest.mark.parametrize("msgspec_codec", [False, True], ids=["pickle", "msgspec"])
def test_large_round_trip_16_mib_both_ways_arrive_intact(msgspec_codec: bool, shared: bool) -> None:
    """Steps: a 32 MiB body limit; four 16 MiB uploads at once, each answered with its bytes
    reversed; on the pipes, or with shared payloads (an arena holding two 16 MiB payloads each
    way, so two of the four also take the pipes while it is full). Expect each reply's sha256 to
    be that of its body reversed."""
    codec: Codec = MsgspecCodec(WireUpload) if msgspec_codec else PickleCodec()
    bodies = [os.urandom(SIZE) for _ in range(4)]
    with spawn_queues() as queues:
        loop = MainLoop(*queues, _behaviour(codec)).start()
        builder = (
            loopback_builder("large-round-trip", 30)
            .routes.with_route("/echo", echo_msgspec_route if msgspec_codec else echo_pickle_route, methods=["POST"])
            .done()
            .uvicorn.with_max_body_size(32 << 20)
            .done()
            .subprocess.with_ipc(*queues)
            .with_codec(codec)
        )
        if shared:
            builder = builder.with_shared_payloads(arena_size=(2 * SIZE + (1 << 20)) * 2)
        server = builder.done().build()
        before = shared_counts()
        try:
            with running(server) as url, ThreadPoolExecutor(len(bodies)) as pool:
                answers = list(pool.map(lambda body: httpx.post(f"{url}/echo", content=body, timeout=60), bodies))
            if shared:
                # At least one of each crossed in the arena (the others may have found it full).
                counts = shared_counts()
                assert counts["requests"] > before["requests"] and counts["replies"] > before["replies"], counts
            for body, answer in zip(bodies, answers, strict=True):
                assert answer.status_code == 200, answer.text
                assert answer.json() == {"size": SIZE, "sha256": hashlib.sha256(body[::-1]).hexdigest()}
        finally:
            loop.stop()


async def faults_route(request: Request, channel: IPC) -> dict[str, Any]:
    """Echoes through the main process, then tells this worker's page faults so far."""
    reply = await channel.submit(Upload(os.urandom(8).hex(), await request.body()))
    return {"size": len(reply.data), "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}


def test_large_round_trip_a_worker_reuses_its_memory_for_the_next_large_body() -> None:
    """Steps: a 16 MiB body limit; 10 uploads of 16 MiB one after another, each answered with its
    bytes; the worker reports its minor page faults after each. Expected: after 4 to warm up,
    under 1,000 faults per round trip (each one's buffers are memory the last one freed; the
    worker keeps it, heap_tuning.py). Left to glibc's defaults the worker gave its freed memory
    back and faulted each round trip's in anew: about 10,000 faults (40 MiB) each."""
    with spawn_queues() as queues:
        loop = MainLoop(*queues, _behaviour(PickleCodec())).start()
        server = (
            loopback_builder("large-faults", 30)
            .routes.with_route("/echo", faults_route, methods=["POST"])
            .done()
            .uvicorn.with_max_body_size(SIZE)
            .done()
            .subprocess.with_ipc(*queues)
            .done()
            .build()
        )
        body = os.urandom(SIZE)
        try:
            with running(server) as url, httpx.Client(timeout=60) as client:
                faults = []
                for _ in range(10):
                    answer = client.post(f"{url}/echo", content=body)
                    assert answer.status_code == 200 and answer.json()["size"] == SIZE, answer.text
                    faults.append(answer.json()["faults"])
        finally:
            loop.stop()
    per_round_trip = (faults[-1] - faults[4]) / (len(faults) - 5)
    assert per_round_trip < 1000, f"{per_round_trip:.0f} page faults per 16 MiB round trip: {faults}"
