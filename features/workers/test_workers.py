"""Several HTTP workers, one port, one pair of queues: every reply and every chunk reaches the
worker waiting for it, in order, exactly once; max_pending holds for the whole server; a dying
worker takes only its own requests with it."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from isolated_api import Server
from isolated_api.testing import MainLoop, loopback_builder, running, wait_until

from .worker_routes import (
    Work,
    answer_upper,
    collect_stream_route,
    stream_chunks,
    whoami_route,
)


def _server(queues: tuple[Any, Any], workers: int, max_pending: int = 1000, restart: bool = False) -> Server:
    b = (
        loopback_builder("workers")
        .routes.with_route("/whoami", whoami_route, methods=["POST"])
        .with_route("/stream", collect_stream_route, methods=["POST"])
        .done()
        .uvicorn.with_workers(workers)
        .done()
        .subprocess.with_ipc(*queues)
        .with_max_pending(max_pending)
        .done()
    )
    if restart:
        b.subprocess.with_auto_restart(max_restarts=5, backoff=0.0)
    return b.build()


def _held_until(release: threading.Event) -> Callable[[Work], Any]:
    """A main process busy until ``release`` is set: deterministic "slow work"."""

    def behaviour(request: Work) -> Any:
        release.wait(60)
        return answer_upper(request)

    return behaviour


async def _gather_posts(url: str, bodies: list[dict[str, Any]], timeout: float = 30.0) -> list[httpx.Response]:
    """All the POSTs at once, each on a connection of its own."""
    limits = httpx.Limits(max_connections=len(bodies) + 1)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return list(await asyncio.gather(*(client.post(url, json=b) for b in bodies)))


def test_workers_share_the_port_and_every_reply_finds_its_worker(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: 4 workers, 400 concurrent requests on fresh connections. Expect 4 live worker
    processes, each client's own answer, nothing pending in the relay afterwards."""
    server = _server(queues, workers=4)
    with running(server) as url:
        assert len({p.pid for p in server.processes}) == 4
        bodies = [{"text": f"w{i}"} for i in range(400)]
        responses = asyncio.run(_gather_posts(f"{url}/whoami", bodies))
        assert [r.status_code for r in responses] == [200] * 400
        assert [r.json()["text"] for r in responses] == [f"W{i}" for i in range(400)]
        served_by = Counter(r.json()["worker_pid"] for r in responses)
        assert set(served_by) <= {p.pid for p in server.processes}
        assert server.ipc is not None and server.ipc.pending_count == 0


def _stream(main_loop: MainLoop) -> Any:
    def behaviour(request: Work) -> None:
        for chunk in stream_chunks(request):
            main_loop.response_q.put(chunk)

    return behaviour


def test_workers_four_by_64_concurrent_streams_arrive_complete_and_ordered(
    queues: tuple[Any, Any], main_loop: MainLoop
) -> None:
    main_loop.behaviour = _stream(main_loop)
    server = _server(queues, workers=4)
    with running(server) as url:
        responses = asyncio.run(_gather_posts(f"{url}/stream", [{"count": 64}] * 256, timeout=60))
        assert [r.status_code for r in responses] == [200] * 256
        assert all(r.json()["indexes"] == list(range(64)) for r in responses)
        assert server.ipc is not None
        assert server.ipc.pending_count == 0 and server.ipc.dropped_count == 0


def test_workers_max_pending_is_exact_for_the_whole_server(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: 4 workers, max_pending=10, 40 concurrent requests held by the main process.
    Expect exactly 10 to reach the main process and succeed once released, 30 to get 503."""
    release = threading.Event()
    main_loop.behaviour = _held_until(release)
    server = _server(queues, workers=4, max_pending=10)
    with running(server) as url, ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(httpx.post, f"{url}/whoami", json={"text": str(i)}, timeout=30) for i in range(40)]
        wait_until(lambda: sum(f.done() for f in futures) == 30, 30, "30 requests to be refused")
        assert len(main_loop.received) == 10
        release.set()
        statuses = Counter(f.result(30).status_code for f in futures)
        assert statuses == Counter({200: 10, 503: 30})
        assert len(main_loop.received) == 10


def test_workers_a_dying_worker_takes_only_its_own_requests(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: 2 workers with auto-restart, 40 requests held; SIGKILL one worker. Expect only the
    dead worker's requests to fail, the other worker's to succeed once released, the abandoned
    ids reported, and a replacement worker serving."""
    release = threading.Event()
    main_loop.behaviour = _held_until(release)
    abandoned: list[list[Any]] = []
    server = _server(queues, workers=2, restart=True)
    server.add_child_exit_callback(lambda code, ids: abandoned.append(ids))
    with running(server) as url, ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(_post, f"{url}/whoami", i) for i in range(40)]
        wait_until(lambda: len(main_loop.received) == 40, 30, "40 requests in the main process")
        victim = server.processes[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: len(abandoned) == 1, 10, "the dead worker's report")
        release.set()
        results = [f.result(30) for f in futures]
        survivors = [r for r in results if r is not None]
        assert len(abandoned[0]) + len(survivors) == 40
        assert all(r["worker_pid"] != victim.pid for r in survivors)
        wait_until(lambda: server.restart_count == 1, 20, "the replacement worker")
        assert victim.pid not in {p.pid for p in server.processes}
        assert httpx.post(f"{url}/whoami", json={"text": "after"}, timeout=10).json()["text"] == "AFTER"


def _post(url: str, i: int) -> dict[str, Any] | None:
    try:
        response = httpx.post(url, json={"text": str(i)}, timeout=30)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None
