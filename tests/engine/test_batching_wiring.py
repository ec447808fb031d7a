"""Batching wired into the rest: MsgspecCodec, a remote engine (EngineHost over ZeroMQ), the
server's /metrics, and the warning for a max_pending that can never fill a batch."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
from typing import Any

import httpx
import pytest

pytest.importorskip("msgspec")

from isolated_api import Engine, EngineHost
from isolated_api.testing import loopback_builder, running, wait_until
from tests.engine.batch_jobs import BatchProbe, Embed, embed_route
from tests.engine.helpers import post_all, server
from tests.engine.wire_jobs import (
    CODEC,
    CountingStepper,
    WireEmbed,
    WireGenerate,
    embed_all,
    wire_embed_route,
    wire_generate_route,
)

Queues = tuple[Any, Any]


def _wire_engine(request_q: Any, response_q: Any) -> Engine:
    engine = Engine(request_q, response_q, codec=CODEC)
    engine.batch(WireEmbed, embed_all, max_batch_size=4, max_wait=60)
    engine.steps(WireGenerate, CountingStepper(), max_active=8)
    return engine


def _sse_streams(url: str, lengths: list[int]) -> list[list[Any]]:
    async def one(client: httpx.AsyncClient, tokens: int) -> list[Any]:
        async with client.stream("POST", "/generate", json={"tokens": tokens}) as response:
            assert response.status_code == 200
            return [json.loads(line[6:])["data"] async for line in response.aiter_lines() if line.startswith("data: ")]

    async def main() -> list[list[Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return list(await asyncio.gather(*(one(client, n) for n in lengths)))

    return asyncio.run(main())


def _check_batches_and_streams(url: str) -> None:
    responses = post_all(f"{url}/embed", [{"text": t} for t in "abcd"])
    assert [r.json() for r in responses] == [{"data": {"text": t.upper(), "batch": 4}} for t in "abcd"]
    streams = _sse_streams(url, [3, 7])
    assert streams == [[0, 1, 2, None], [0, 1, 2, 3, 4, 5, 6, None]]


def test_batching_wiring_msgspec_codec_batches_and_steps(queues: Queues) -> None:
    """Steps: server and engine sharing MsgspecCodec; a batch of 4 and two SSE streams; a batch with
    one result MessagePack can't carry. Expect each answer decoded from one encoded message per
    batch or step, and the unencodable one a 500 alone."""
    srv = (
        loopback_builder("batching-wire")
        .routes.with_route("/embed", wire_embed_route, methods=["POST"])
        .with_route("/generate", wire_generate_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .with_codec(CODEC)
        .done()
        .build()
    )
    with _wire_engine(*queues), running(srv) as url:
        _check_batches_and_streams(url)
        mixed = post_all(f"{url}/embed", [{"text": t} for t in ("a", "opaque", "b", "c")])
        assert [r.status_code for r in mixed] == [200, 500, 200, 200]
        # The encoding error names the user's objects: the client gets an error id, the log the detail.
        assert "internal error (error id" in mixed[1].json()["detail"]


def test_batching_wiring_remote_engine_behind_engine_host() -> None:
    """Steps: an Engine with batch and steps behind an EngineHost (ZeroMQ, MsgspecCodec) in this
    process; an API server dialing it. Expect the same answers as on one machine."""
    request_q: queue.Queue[Any] = queue.Queue()
    response_q: queue.Queue[Any] = queue.Queue()
    host = EngineHost(request_q, response_q, bind="tcp://127.0.0.1:0", codec=CODEC, max_pending=100)
    api = (
        loopback_builder("batching-remote", timeout=20)
        .routes.with_route("/embed", wire_embed_route, methods=["POST"])
        .with_route("/generate", wire_generate_route, methods=["POST"])
        .done()
    )
    with host, _wire_engine(request_q, response_q):
        assert host.address is not None
        srv = api.subprocess.with_engines(host.address, ping_interval=0.25).with_codec(CODEC).done().build()
        with running(srv) as url:

            def ready() -> bool:
                body = httpx.get(f"{url}/health/ready", timeout=2).json()
                return any(e["state"] == "ready" for e in body.get("engines", []))

            wait_until(ready, 20, "the engine to be ready")
            _check_batches_and_streams(url)


def test_batching_wiring_metrics_reach_the_server_and_a_batch_that_cannot_fill_warns(
    queues: Queues, caplog: pytest.LogCaptureFixture
) -> None:
    """Steps: a server with max_pending=3 (server-wide), an engine batching up to 8 and stepping;
    three requests. Expect one warning naming max_pending, and /metrics showing the batch size
    histogram, the batch count and the wait histogram of that handler, and the step time."""
    probe = BatchProbe()
    engine = Engine(*queues)
    engine.batch(Embed, probe, max_batch_size=8, max_wait=0.05)
    with caplog.at_level(logging.WARNING, "isolated_api.engine"):
        with engine, running(server(queues, [("/embed", embed_route)], max_pending=3)) as url:
            responses = post_all(f"{url}/embed", [{"text": t} for t in "xyz"])
            assert [r.status_code for r in responses] == [200, 200, 200]
            post_all(f"{url}/embed", [{"text": "again"}])
            wait_until(lambda: engine.served == 4, 10, "the requests to be counted")
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
    warnings = [r.getMessage() for r in caplog.records if "can never fill" in r.getMessage()]
    assert len(warnings) == 1 and "max_pending=3" in warnings[0]
    calls = len(probe.calls)
    name = 'handler="BatchProbe"'
    assert f"isolated_api_engine_batches_total{{{name}}} {calls}.0" in metrics
    assert f"isolated_api_engine_batch_size_count{{{name}}} {calls}.0" in metrics
    assert f"isolated_api_engine_batch_size_sum{{{name}}} 4.0" in metrics
    assert f"isolated_api_engine_batch_wait_seconds_count{{{name}}} {calls}.0" in metrics


def test_batching_wiring_step_metrics_on_the_server(queues: Queues) -> None:
    srv = (
        loopback_builder("batching-step-metrics")
        .routes.with_route("/generate", wire_generate_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .with_codec(CODEC)
        .done()
        .build()
    )
    with _wire_engine(*queues) as engine, running(srv) as url:
        assert _sse_streams(url, [2]) == [[0, 1, None]]
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'isolated_api_engine_steps_total{handler="CountingStepper"} 3.0' in metrics
        assert 'isolated_api_engine_step_seconds_count{handler="CountingStepper"} 3.0' in metrics
        assert engine.metrics is not None
