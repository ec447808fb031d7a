"""(c) The overload burst: 200 simultaneous requests against max_pending=10 while the main process
holds every admitted request. How long the 190 rejections take, and the service right after."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from features.backpressure.backpressure import Job, JobDone, job_route, load_route
from isolated_api.testing import MainLoop, loopback_builder, running, wait_until
from stress.figures import Figures
from stress.loadgen import LoadJob, LoadSpec, percentile, run_load
from stress.servers import close_queues

pytestmark = pytest.mark.stress

BURST = 200
MAX_PENDING = 10


class Holder:
    """The main process: "hold" waits for ``release``; anything else is answered at once."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, request: Job) -> JobDone:
        if request.text == "hold":
            self.release.wait(120)
        return JobDone(request.id, request.text.upper())


@pytest.mark.timeout(180)
def test_stress_overload_burst(tmp_path: Path, figures: Figures) -> None:
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    holder = Holder()
    loop = MainLoop(request_q, response_q, holder).start()
    server = (
        loopback_builder("stress-burst")
        .routes.with_route("/job", job_route, methods=["POST"])
        .with_route("/load", load_route)
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .with_max_pending(MAX_PENDING)
        .with_log_file(str(tmp_path / "child.log"))
        .done()
        .build()
    )
    try:
        with running(server) as url:
            port = server.port
            assert port is not None, "a started server reports the port it bound"
            burst = LoadJob(LoadSpec(port, "/job", b'{"text": "hold"}', BURST, mode="burst"))
            try:
                # Released only once every rejection is in: the 190 cannot have waited for the 10.
                wait_until(
                    lambda: httpx.get(f"{url}/load", timeout=10).json()["rejected"] == BURST - MAX_PENDING,
                    timeout=60,
                    message="the burst's rejections",
                )
                # The admitted ones are on their way (a worker writes once per loop iteration).
                wait_until(lambda: len(loop.received) >= MAX_PENDING, timeout=30, message="the admitted requests")
                assert len(loop.received) == MAX_PENDING
            finally:
                holder.release.set()
            result = burst.result()
            recovery = run_load(LoadSpec(port, "/job", b'{"text": "x"}', MAX_PENDING - 2, requests=2000, warmup=100))
            load: dict[str, Any] = httpx.get(f"{url}/load", timeout=10).json()
    finally:
        holder.release.set()
        loop.stop()
        close_queues(request_q, response_q)

    assert result.statuses == {200: MAX_PENDING, 503: BURST - MAX_PENDING}, result.statuses
    rejected = [t for status, t in result.finished if status == 503]
    admitted = [t for status, t in result.finished if status == 200]
    assert max(rejected) < min(admitted)
    assert recovery.statuses == {200: 2000}
    assert (load["pending"], load["rejected"]) == (0, BURST - MAX_PENDING)
    assert "Traceback" not in (tmp_path / "child.log").read_text()
    # Generous sanity bound: the rejections are fast even on a loaded machine.
    assert max(rejected) < 30.0
    figures.table(
        f"overload burst: {BURST} simultaneous POST /job, max_pending={MAX_PENDING}, main process holding",
        ["503s", "first 503 ms", "p50 503 ms", "last 503 ms", "200s", "after-burst req/s (8 conns)", "p50 ms"],
        [
            [
                str(len(rejected)),
                f"{min(rejected) * 1e3:.1f}",
                f"{percentile(rejected, 0.5) * 1e3:.1f}",
                f"{max(rejected) * 1e3:.1f}",
                str(len(admitted)),
                f"{recovery.rate:.0f}",
                f"{percentile(recovery.latencies, 0.5) * 1e3:.2f}",
            ]
        ],
    )
