"""(i) The opt-in reply busy wait (``.subprocess.with_reply_busy_wait``) at one connection: the
plain route ("put": the ``IPC`` dependency, a ``uuid4()`` id, ``response_q.put`` in the main
loop) with and without it, beside the same route answered in-process, in one run.

Why it is measured apart: by default a worker's event loop sleeps until the reply comes, and on a
VM whose idle vCPUs halt at once, waking one costs tens of microseconds with caches gone cold
(docs/performance.md, "One connection"). With the option, after a lone request the worker checks
its pipe for up to the given time before it sleeps. The figure is its p50 over in-process in
bare ``multiprocessing.Queue`` round trips, the floor measured after each round, as
``test_throughput.py`` reads it; and the worker's CPU per request, which is what the option
spends."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from isolated_api import Server
from stress.figures import Figures
from stress.loadgen import LoadSpec, percentile, run_load
from stress.queue_floor import bare_queue_round_trip
from stress.servers import cpu_seconds, ipc_server

pytestmark = pytest.mark.stress

BODY = b'{"text": "hello world"}'
BUSY_WAIT = 0.0003
REQUESTS = 1500
WARMUP = 200
ROUNDS = 5


@pytest.fixture(scope="module")
def busy_ipc(stress_logs: Path) -> Iterator[tuple[Server, str]]:
    with ipc_server(stress_logs, busy_wait=BUSY_WAIT) as served:
        yield served


def _measure(url: str, pid: int | None) -> tuple[float, float]:
    """p50 seconds at one connection, and the server process's CPU seconds per request."""
    port = int(url.rsplit(":", 1)[1])
    before = cpu_seconds(pid) if pid is not None else 0.0
    result = run_load(LoadSpec(port, "/echo", BODY, 1, requests=REQUESTS, warmup=WARMUP))
    assert result.statuses == {200: REQUESTS}, result.statuses
    used = cpu_seconds(pid) - before if pid is not None else 0.0
    return percentile(result.latencies, 0.5), used / (REQUESTS + WARMUP)


@pytest.mark.timeout(300)
def test_stress_reply_busy_wait_at_one_connection(
    ipc: tuple[Server, str], busy_ipc: tuple[Server, str], ceiling: tuple[int, str], figures: Figures
) -> None:
    plain_worker, busy_worker = ipc[0].process, busy_ipc[0].process
    assert plain_worker is not None and busy_worker is not None, "started servers have their workers"
    targets = {
        "in-process": (ceiling[1], ceiling[0]),
        "put": (ipc[1], plain_worker.pid),
        "put + busy wait": (busy_ipc[1], busy_worker.pid),
    }
    names = list(targets)
    p50: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    floors: list[float] = []
    over: dict[str, list[float]] = {name: [] for name in names[1:]}
    for round_ in range(ROUNDS):
        for name in names[round_ % 3 :] + names[: round_ % 3]:
            latency, seconds = _measure(*targets[name])
            p50[name].append(latency)
            cpu[name].append(seconds)
        floors.append(bare_queue_round_trip())
        for name in over:
            over[name].append((p50[name][-1] - p50["in-process"][-1]) / floors[-1])
    rows = []
    for name in names:
        trips = "" if name not in over else f"{statistics.median(over[name]):.2f}"
        spread = "" if name not in over else f"{min(over[name]):.2f}-{max(over[name]):.2f}"
        p50_ms, cpu_us = statistics.median(p50[name]) * 1e3, statistics.median(cpu[name]) * 1e6
        rows.append([name, f"{p50_ms:.3f}", trips, spread, f"{cpu_us:.0f}"])
    figures.table(
        f"1 connection, POST /echo: the reply busy wait ({BUSY_WAIT * 1e6:.0f} us) against the default, beside "
        f"in-process (p50 ms, medians of {ROUNDS} interleaved rounds; over in-process in bare multiprocessing.Queue "
        f"round trips, the floor measured after each round: {statistics.median(floors) * 1e3:.3f} ms; the server "
        "process's CPU per request)",
        ["server", "p50 ms", "round trips", "rounds", "CPU us/req"],
        rows,
    )
