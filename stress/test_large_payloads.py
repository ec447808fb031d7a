"""Large payloads through HTTP (issue 28), side by side in one run: the in-process ceiling
(FastAPI answering in the handler, with the heap settings the HTTP worker runs with,
``heap_tuning.py``), the same with glibc's default heap settings ("stock"), the default path
(private pipes), and shared payloads (``with_shared_payloads``). Each server runs in a process of
its own, whose CPU and peak memory are read from /proc: for the IPC paths that is the main
process (relay and main loop), for the in-process ones the one process that does everything. The
client (httpx, in this process) is the same for all, so its cost is in every latency alike.

Per body size (the reply is as large as the request): the p50 of a round trip, the MB/s it makes
(body bytes / p50), and the measured process's CPU per MB moved (request and reply); the servers
run at once and take turns, in rounds over the sizes and in a rotated order. Then the
head-of-line check: the p99 of small JSON requests at 16 connections (the load generator, in its
own process) with and without one client uploading 16 MiB bodies in a loop. Then a 16 MiB
request's peak RSS cost in the measured process (VmHWM after reset, minus VmRSS before): first in
a fresh process, then in steady state, where memory freed by earlier requests and still resident
(the allocator keeps it, the arena's pages stay) is reused and not counted again."""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time

import httpx
import pytest

from stress.figures import Figures
from stress.large_payload_servers import OCTET, MiB, Path, large_payload_server
from stress.loadgen import LoadSpec, percentile, run_load
from stress.servers import threads_cpu_seconds

pytestmark = pytest.mark.stress

PATHS: tuple[Path, ...] = ("ceiling", "stock", "pipes", "shared")
# Body size -> round trips measured in each of ROUNDS rounds (after one warm-up).
SIZES = {1 << 10: 100, 64 << 10: 50, 1 * MiB: 20, 16 * MiB: 8, 64 * MiB: 2}
# The sizes are measured in rounds, every path in each, in a rotated order: a drift in the
# machine's speed (the VM's neighbours) touches all alike, and one slow spell is not a path's p50.
ROUNDS = 3
SMALL = b'{"text": "hello world"}'
HOL_SECONDS = 4.0


def _label(size: int) -> str:
    return f"{size >> 20} MiB" if size >= MiB else f"{size >> 10} KiB"


def _round_trips(client: httpx.Client, url: str, body: bytes, count: int) -> list[float]:
    client.post(f"{url}/blob", content=body, headers={"content-type": OCTET})
    times = []
    for _ in range(count):
        started = time.perf_counter()
        answer = client.post(f"{url}/blob", content=body, headers={"content-type": OCTET})
        times.append(time.perf_counter() - started)
        assert answer.status_code == 200 and len(answer.content) == len(body), answer.status_code
    return times


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def _peak_cost(pid: int, client: httpx.Client, url: str, body: bytes) -> float:
    """MiB the process's RSS peaked above where it was, over one round trip of ``body``."""
    before = _status(pid, "VmRSS")
    with open(f"/proc/{pid}/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS
    client.post(f"{url}/blob", content=body, headers={"content-type": OCTET})
    return (_status(pid, "VmHWM") - before) / 1024


def _small_p99(port: int, uploading: bool, url: str) -> float:
    stop = threading.Event()
    body = os.urandom(16 * MiB)

    def upload() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                client.post(f"{url}/blob", content=body, headers={"content-type": OCTET})

    uploader = threading.Thread(target=upload, daemon=True)
    if uploading:
        uploader.start()
    try:
        spec = LoadSpec(port, "/echo", SMALL, 16, warmup=64, duration=HOL_SECONDS)
        result = run_load(spec)
    finally:
        stop.set()
        if uploading:
            uploader.join(120)
    assert set(result.statuses) == {200}, result.statuses
    return percentile(result.latencies, 0.99)


def _hol_row(path: str, alone: float, uploading: float, first: float, steady: float) -> list[str]:
    ratio = f"{uploading / alone:.2f}"
    return [path, f"{alone * 1e3:.2f}", f"{uploading * 1e3:.2f}", ratio, f"{first:.1f}", f"{steady:.1f}"]


@pytest.mark.timeout(600)
def test_large_payloads_side_by_side(figures: Figures) -> None:
    bodies = {size: os.urandom(size) for size in SIZES}
    large = os.urandom(16 * MiB)
    p50: dict[tuple[Path, int], float] = {}
    cpu_per_mb: dict[tuple[Path, int], float] = {}
    first_peak: dict[Path, float] = {}
    peak: dict[Path, float] = {}
    hol: dict[Path, tuple[float, float]] = {}
    with contextlib.ExitStack() as stack:
        served = {path: stack.enter_context(large_payload_server(path)) for path in PATHS}
        clients = {path: stack.enter_context(httpx.Client(timeout=120)) for path in PATHS}
        # A fresh process's first 16 MiB round trip: every buffer it needs is new to it.
        for path, (pid, url) in served.items():
            first_peak[path] = _peak_cost(pid, clients[path], url, large)
        times: dict[tuple[Path, int], list[float]] = {(path, size): [] for path in PATHS for size in SIZES}
        cpu_seconds: dict[tuple[Path, int], float] = dict.fromkeys(times, 0.0)
        for turn, (round_, (size, count)) in enumerate(
            (round_, item) for round_ in range(ROUNDS) for item in SIZES.items()
        ):
            shift = (turn + round_) % len(PATHS)
            for path in PATHS[shift:] + PATHS[:shift]:
                pid, url = served[path]
                cpu = threads_cpu_seconds(pid)
                times[path, size] += _round_trips(clients[path], url, bodies[size], count)
                cpu_seconds[path, size] += threads_cpu_seconds(pid) - cpu
        for (path, size), measured in times.items():
            moved = 2 * size * ROUNDS * (SIZES[size] + 1) / 1e6
            cpu_per_mb[path, size] = cpu_seconds[path, size] / moved * 1e3
            p50[path, size] = statistics.median(measured)
        for path, (pid, url) in served.items():
            peak[path] = statistics.median(_peak_cost(pid, clients[path], url, large) for _ in range(3))
            port = int(url.rsplit(":", 1)[1])
            hol[path] = (_small_p99(port, False, url), _small_p99(port, True, url))
    rows = []
    for size in SIZES:
        row = [_label(size)]
        for path in PATHS:
            row += [f"{p50[path, size] * 1e3:.2f}", f"{size / p50[path, size] / 1e6:.0f}"]
        row += [f"{cpu_per_mb[path, size]:.2f}" for path in PATHS]
        row += [f"{p50[path, size] / p50['ceiling', size]:.2f}" for path in ("stock", "pipes", "shared")]
        shared_cpu = cpu_per_mb["shared", size]
        # Nanoseconds of CPU (schedstat), so 0 only if nothing ran.
        row.append(f"{cpu_per_mb['pipes', size] / shared_cpu:.1f}" if shared_cpu else "-")
        rows.append(row)
    header = ["body"]
    for path in PATHS:
        header += [f"{path} p50 ms", f"{path} MB/s"]
    header += [f"{path} CPU ms/MB" for path in PATHS]
    header += ["stock/ceiling", "pipes/ceiling", "shared/ceiling", "CPU pipes/shared"]
    figures.table("large payloads: one round trip at a time (reply as large as the request)", header, rows)
    figures.table(
        "large payloads: small-request p99 (ms) at 16 connections, without / with one client uploading 16 MiB; "
        "peak RSS above RSS before, one 16 MiB round trip (MiB): a fresh process's first, then steady state",
        ["path", "p99 alone", "p99 uploading", "ratio", "first 16 MiB peak", "steady 16 MiB peak"],
        [_hol_row(path, *hol[path], first_peak[path], peak[path]) for path in PATHS],
    )
