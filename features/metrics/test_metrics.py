"""GET /metrics over real HTTP: requests by route template and status, rejections, drops, the
round-trip histogram, stream chunks and restarts, consistent across several workers."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from isolated_api.testing import MainLoop, loopback_builder, running, wait_until

from .metrics import Echoed, collect_stream_route, ping_route, whoami_route


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def _gather_posts(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies) + 1)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return list(await asyncio.gather(*(client.post(url, json=b) for b in bodies)))


def _held_until(release: threading.Event, then: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Holds each request until ``release`` is set, then answers as ``then``: deterministic slow work."""

    def behaviour(request: Any) -> Any:
        release.wait(60)
        return then(request)

    return behaviour


def _server(queues: tuple[Any, Any], workers: int = 1, max_pending: int = 100, restart: bool = False) -> Any:
    b = (
        loopback_builder("metrics")
        .routes.with_route("/whoami", whoami_route, methods=["POST"])
        .with_route("/stream", collect_stream_route, methods=["POST"])
        .with_route("/ping", ping_route)
        .done()
        .uvicorn.with_workers(workers)
        .done()
        .subprocess.with_ipc(*queues)
        .with_max_pending(max_pending)
        .done()
    )
    if restart:
        b.subprocess.with_auto_restart(backoff=0.0)
    return b.build()


def test_metrics_count_requests_chunks_and_round_trips_across_workers(
    queues: tuple[Any, Any], main_loop: MainLoop
) -> None:
    """Steps: 2 workers; 40 unary requests, 5 streams of 8 chunks, 3 unknown paths. Expect one
    consistent view from either worker: counts by route template and status, 40 + 5 round trips,
    40 stream chunks, nothing pending."""
    server = _server(queues, workers=2)
    with running(server) as url:
        asyncio.run(_gather_posts(f"{url}/whoami", [{"text": f"m{i}"} for i in range(40)]))
        asyncio.run(_gather_posts(f"{url}/stream", [{"count": 8}] * 5))
        for _ in range(3):
            assert httpx.get(f"{url}/nowhere/{os.getpid()}", timeout=10).status_code == 404

        def scrape() -> dict[Any, float]:
            response = httpx.get(f"{url}/metrics", timeout=10, headers={"connection": "close"})
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            return _samples(response.text)

        wait_until(
            lambda: (
                _value(scrape(), "isolated_api_http_requests_total", method="POST", route="/whoami", status="200") == 40
            ),
            10,
            "40 counted /whoami requests",
        )
        samples = scrape()
        assert _value(samples, "isolated_api_http_requests_total", method="POST", route="/stream", status="200") == 5
        assert _value(samples, "isolated_api_http_requests_total", method="GET", route="<unmatched>", status="404") == 3
        assert _value(samples, "isolated_api_ipc_round_trip_seconds_count") == 45
        assert _value(samples, "isolated_api_stream_chunks_total") == 40
        assert _value(samples, "isolated_api_pending_requests") == 0
        assert _value(samples, "isolated_api_forwarded_requests_total") == 45
        assert server.metrics_text().count(b"isolated_api_http_requests_total") >= 3


def _main_side(server: Any) -> dict[Any, float]:
    """The main process's own view (no scrape through a worker, which would send its counts first)."""
    return _samples(server.metrics_text().decode())


def test_metrics_rejections_drops_and_restarts(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: max_pending 2; two held requests, a third refused, a reply for an unknown id; once
    the main process has the worker's counts, SIGKILL the worker. Expect the counts kept across
    the restart: one rejection, one dropped reply, one restart."""
    release = threading.Event()
    main_loop.behaviour = _held_until(release, main_loop.behaviour)
    server = _server(queues, max_pending=2, restart=True)
    with running(server) as url, ThreadPoolExecutor(3) as pool:
        held = [pool.submit(httpx.post, f"{url}/whoami", json={"text": str(i)}, timeout=30) for i in range(2)]
        main_loop.wait_received(2)
        assert httpx.post(f"{url}/whoami", json={"text": "over"}, timeout=10).status_code == 503
        main_loop.response_q.put(Echoed("unknown-id", ""))
        release.set()
        assert [f.result(30).status_code for f in held] == [200, 200]
        # A worker reports after its loop's turn: a kill before that would lose the report.
        refused = {"method": "POST", "route": "/whoami", "status": "503"}
        wait_until(
            lambda: _value(_main_side(server), "isolated_api_http_requests_total", **refused) == 1,
            10,
            "the worker's report",
        )
        os.kill(server.process.pid, signal.SIGKILL)
        wait_until(lambda: server.restart_count == 1, 20, "the restart")
        wait_until(lambda: httpx.get(f"{url}/ping", timeout=2).status_code == 200, 10, "the new worker")
        samples = _samples(httpx.get(f"{url}/metrics", timeout=10).text)
        rejected = _value(samples, "isolated_api_rejected_requests_total", reason="worker") + _value(
            samples, "isolated_api_rejected_requests_total", reason="max_pending"
        )
        assert rejected == 1
        assert _value(samples, "isolated_api_dropped_replies_total", where="main") == 1
        assert _value(samples, "isolated_api_worker_restarts_total") == 1


def test_metrics_a_scrape_and_a_stop_miss_no_request(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: one worker; 30 sequential requests, each followed at once by a scrape through the
    worker; then 20 more and, without a scrape, wait; then 10 more and stop the server at once.
    Expect every scrape to count every request before it, the main process to receive the 20 by
    itself, and the 10 counted after the stop."""
    server = _server(queues)

    def whoami_200(samples: dict[Any, float]) -> float:
        return _value(samples, "isolated_api_http_requests_total", method="POST", route="/whoami", status="200")

    with running(server) as url, httpx.Client(timeout=10) as client:
        for i in range(30):
            assert client.post(f"{url}/whoami", json={"text": str(i)}).status_code == 200
            assert whoami_200(_samples(client.get(f"{url}/metrics").text)) == i + 1
        for i in range(20):
            assert client.post(f"{url}/whoami", json={"text": str(i)}).status_code == 200
        wait_until(lambda: whoami_200(_main_side(server)) == 50, 10, "the report of the last 20")
        for i in range(10):
            assert client.post(f"{url}/whoami", json={"text": str(i)}).status_code == 200
        server.stop(timeout=10)
        assert whoami_200(_main_side(server)) == 60


def test_metrics_can_be_moved_or_turned_off(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    server = (
        loopback_builder("off")
        .routes.with_route("/ping", ping_route)
        .without_metrics()
        .done()
        .subprocess.with_ipc(*queues)
        .done()
    ).build()
    with running(server) as url:
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 404
    moved = (
        loopback_builder("moved")
        .routes.with_route("/ping", ping_route)
        .with_metrics("/internal/metrics")
        .done()
        .build()
    )
    assert "/internal/metrics" in [getattr(r, "path", "") for r in moved.app.routes]
