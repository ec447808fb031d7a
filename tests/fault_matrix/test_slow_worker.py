"""Fault matrix, issue 16 item 1: a worker that stops reading its pipe costs only itself.

| condition                                        | before                        | after                            |
|--------------------------------------------------|-------------------------------|----------------------------------|
| 1 of 2 workers SIGSTOPped, 8 MB replies for it   | other worker's requests stall | other worker answers; stop() ok  |
| ... and it stays stopped past the stall deadline | relay thread blocked for good | killed, requests ended, replaced |
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from isolated_api import IPC
from isolated_api.testing import pid_alive, wait_until
from tests.helpers import Done, MainLoop, Work, answer_upper, builder, new_id, upper_route

BIG = 8 << 20


async def big_route(channel: IPC) -> dict[str, Any]:
    """Asks the main process for an 8 MB reply; says which worker asked."""
    reply = await channel.submit(Work(new_id(), f"big:{os.getpid()}"))
    return {"size": len(reply.text), "pid": os.getpid()}


def _server(queues: tuple[Any, Any], stall_timeout: float = 20.0) -> Any:
    return (
        builder("slow-worker")
        .with_timeout(20)
        .routes.with_route("/big", big_route, methods=["POST"])
        .with_route("/upper", upper_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .with_auto_restart(backoff=0.0)
        .with_stalled_worker_limits(stall_timeout=stall_timeout)
        .done()
        .uvicorn.with_workers(2)
        .done()
        .build()
    )


def _holding_big(release: threading.Event) -> Any:
    def behaviour(request: Work) -> Any:
        if request.text.startswith("big:"):
            release.wait(60)
            return Done(request.id, "x" * BIG)
        return answer_upper(request)

    return behaviour


def _post(url: str, path: str, timeout: float = 30) -> httpx.Response | None:
    try:
        return httpx.post(f"{url}{path}", json={"text": "hi"}, timeout=timeout)
    except httpx.HTTPError:
        return None


@pytest.fixture
def stopped_worker(queues: tuple[Any, Any]) -> Iterator[tuple[Any, MainLoop, threading.Event, int, str]]:
    """A 2-worker server whose main loop holds four /big requests; one worker that has one in
    flight is SIGSTOPped, then the main loop answers them all (8 MB each)."""
    release = threading.Event()
    loop = MainLoop(*queues, behaviour=_holding_big(release)).start()
    server = _server(queues)
    server.start_subprocess()
    url = f"http://127.0.0.1:{server.port}"
    pool = ThreadPoolExecutor(4)
    stopped = 0
    try:
        bigs = [pool.submit(_post, url, "/big") for _ in range(4)]
        loop.wait_received(4)
        stopped = int(loop.received[0].text.split(":")[1])
        os.kill(stopped, signal.SIGSTOP)
        release.set()
        yield server, loop, release, stopped, url
        for future in bigs:
            future.result(60)
    finally:
        if stopped and pid_alive(stopped):
            os.kill(stopped, signal.SIGCONT)
        server.stop(timeout=2)
        pool.shutdown(wait=True, cancel_futures=True)
        loop.stop()


def test_slow_worker_blocked_one_does_not_stall_the_other_and_stop_is_bounded(
    stopped_worker: tuple[Any, MainLoop, threading.Event, int, str],
) -> None:
    """Steps: one of two workers SIGSTOPped with 8 MB replies queued for it; 20 requests on new
    connections (only the running worker accepts). Expect all 20 answered 200 by the other
    worker; then stop(timeout=1) returns within its bound (timeout + 1 s + kill_timeout x 2)."""
    server, _, _, stopped, url = stopped_worker
    latencies = []
    for _ in range(20):
        started = time.perf_counter()
        answer = _post(url, "/upper", timeout=10)
        latencies.append(time.perf_counter() - started)
        assert answer is not None and answer.status_code == 200
    print(
        f"\nother worker's latency while one is stopped: p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    assert pid_alive(stopped)
    started = time.monotonic()
    server.stop(timeout=1)
    took = time.monotonic() - started
    print(f"stop(timeout=1) with a stopped worker took {took:.2f} s")
    assert took < 1 + 1 + 2 * 2 + 2  # drain + uvicorn grace + kill_timeout (join, endpoint) + slack


def test_slow_worker_stalled_past_its_deadline_is_killed_and_replaced(queues: tuple[Any, Any]) -> None:
    """Steps: the stall deadline set to 1 s (.subprocess.with_stalled_worker_limits); one of two
    workers SIGSTOPped with 8 MB replies queued for it. Expect: it is killed (treated as dead)
    well before the default 20 s, a replacement starts in its slot, and requests are still
    answered."""
    release = threading.Event()
    loop = MainLoop(*queues, behaviour=_holding_big(release)).start()
    server = _server(queues, stall_timeout=1.0)
    server.start_subprocess()
    url = f"http://127.0.0.1:{server.port}"
    stopped = 0
    try:
        with ThreadPoolExecutor(4) as pool:
            bigs = [pool.submit(_post, url, "/big") for _ in range(4)]
            loop.wait_received(4)
            stopped = int(loop.received[0].text.split(":")[1])
            before = {p.pid for p in server.processes}
            os.kill(stopped, signal.SIGSTOP)
            release.set()
            wait_until(lambda: not pid_alive(stopped), 15, "the stalled worker to be killed")
            wait_until(lambda: len({p.pid for p in server.processes} - before) == 1, 30, "a replacement")
            results = [future.result(60) for future in bigs]
        # Requests of the killed worker ended (connection dropped); the others got their 8 MB.
        assert all(r is None or (r.status_code == 200 and r.json()["size"] == BIG) for r in results)
        answer = _post(url, "/upper", timeout=10)
        assert answer is not None and answer.status_code == 200
    finally:
        server.stop(timeout=2)
        loop.stop()
