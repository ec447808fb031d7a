"""Issue 5's figures: unary requests/s and streamed chunks/s with 1, 2 and 4 HTTP workers against
the same main process, in one run, as ratios to 1 worker. On 2 cores the gain is bounded (the
load generator and the main process share them); the point is correctness under load and where
the time goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from stress.figures import Figures
from stress.servers import cpu_seconds, ipc_server
from stress.test_throughput import _streams, _unary

pytestmark = pytest.mark.stress


@pytest.mark.timeout(300)
def test_stress_workers_scaling(stress_logs: Path, figures: Figures) -> None:
    rows: list[list[str]] = []
    base: tuple[float, float] | None = None
    for workers in (1, 2, 4):
        with ipc_server(stress_logs, workers=workers) as (server, url):
            pids = [p.pid for p in server.processes if p.pid is not None]
            assert len(pids) == workers
            cpu_before = sum(cpu_seconds(pid) for pid in pids)
            unary = _unary(url, "/echo", 64)
            streams = _streams(url, "/stream", 32)
            cpu_used = sum(cpu_seconds(pid) for pid in pids) - cpu_before
            relay = server.ipc
            assert relay is not None and relay.pending_count == 0
        if base is None:
            base = (unary.rate, streams.chunk_rate)
        rows.append(
            [
                str(workers),
                f"{unary.rate:.0f}",
                f"{unary.rate / base[0]:.2f}",
                f"{streams.chunk_rate:.0f}",
                f"{streams.chunk_rate / base[1]:.2f}",
                f"{cpu_used:.1f}",
            ]
        )
    figures.table(
        "HTTP workers against one main process (unary at 64 conns, 32 streams x 256 chunks)",
        ["workers", "unary/s", "vs 1", "chunks/s", "vs 1", "workers' CPU s"],
        rows,
    )
