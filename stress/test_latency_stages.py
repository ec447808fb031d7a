"""Where one request's time goes on the IPC path at one connection, stage by stage, and the
floor: the same three hops (child -> relay thread -> your thread -> child) over bare pipes with
no work at all.

Stamps come from ``stress/latency_probe.py`` (CLOCK_MONOTONIC, shared by all processes); the
main process replies through a ``ReplyBatcher`` (the path the README recommends). The figures are
medians over sequential requests from one client connection; the client-side p50 of the same
child answering a route in-process is printed beside them.
"""

from __future__ import annotations

import http.client
import itertools
import json
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from isolated_api import ReplyBatcher, Server
from stress.figures import Figures
from stress.latency_probe import BY_ID, ProbeReply, install, latest, probe_lifespan, probe_route
from stress.servers import close_queues, loopback_builder

REQUESTS = 500  # per round
ROUNDS = 4  # the two routes alternate, so a slow stretch of the machine hits both
WARMUP = 100

# (label, from stamp, to stamp) in the order a request meets them. Each boundary in another
# process is the start of a write on one side and the start of the read it wakes on the other,
# so every stage is causally ordered (the end of a write can come after the reader has begun:
# the woken thread may run first).
STAGES = (
    ("child: admit (the waiter is registered after the write)", "submit", "child.send>"),
    ("child: encode, write; the relay's reader wakes", "child.send>", "feed>"),
    ("relay: decode the frame, route the request", "feed>", "main.put>"),
    ("write to request_q; your loop's get() returns", "main.put>", "got"),
    ("your loop, until ReplyBatcher hands over", "got", "main.route>"),
    ("relay: route and encode the reply", "main.route>", "main.write>"),
    ("write to the child; its event loop wakes", "main.write>", "child.read>"),
    ("child: decode, wake the waiter, resume", "child.read>", "resumed"),
)
# Writes timed on their own (inside the stages above): a write that wakes a sleeping reader
# pays for the wake-up.
WRITES = (
    ("  of which encoding and writing the request", "child.send>", "child.send<"),
    ("  of which writing to request_q", "main.put>", "main.put<"),
    ("  of which writing to the child's pipe", "main.write>", "main.write<"),
)


async def plain_route() -> dict[str, int]:
    return {"id": 0}


class _Replier:
    """The main loop: answers every probe at once through a ReplyBatcher, noting the main
    process's stamps for it."""

    def __init__(self, request_q: Any, response_q: Any) -> None:
        self.request_q = request_q
        self.batcher = ReplyBatcher(response_q)
        self.stamps: dict[str, dict[str, int]] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            probe = self.request_q.get()
            got = time.perf_counter_ns()
            if probe is None:
                return
            self.batcher.put(ProbeReply(probe.id))  # written from this thread: nothing else is awaited
            # The relay's stamps for this request (BY_ID) are joined after the run: its reader
            # may note them only after this thread has the request.
            mine = {stage: latest(stage) for stage in ("main.route>", "main.write>", "main.write<")}
            mine["got"] = got
            self.stamps[probe.id] = mine

    def stop(self) -> None:
        self.request_q.put(None)
        self._thread.join(5)
        self.batcher.close()


@contextmanager
def _probe_server(log_dir: Path) -> Iterator[tuple[Server, _Replier]]:
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    replier = _Replier(request_q, response_q)
    server = (
        loopback_builder("latency-stages")
        .routes.with_route("/probe", probe_route, methods=["POST"])
        .with_route("/plain", plain_route, methods=["POST"])
        .with_lifespan(probe_lifespan)
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .with_log_file(str(log_dir / "latency-stages-child.log"))
        .done()
        .build()
    )
    server.start_subprocess()
    try:
        yield server, replier
    finally:
        server.stop(timeout=5.0)
        replier.stop()
        close_queues(request_q, response_q)


def _client(port: int, path: str, count: int, conn: Connection) -> None:
    """Sequential requests over one keep-alive connection: (bodies, client-side seconds)."""
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bodies, seconds = [], []
    for _ in range(count):
        started = time.perf_counter()
        client.request("POST", path, b"{}", {"content-type": "application/json"})
        response = client.getresponse()
        body = response.read()
        seconds.append(time.perf_counter() - started)
        assert response.status == 200, (response.status, body)
        bodies.append(json.loads(body))
    client.close()
    conn.send((bodies[WARMUP:], seconds[WARMUP:]))
    conn.close()


def _in_process(target: Any, *args: Any, timeout: float = 120.0) -> Any:
    """Runs ``target(*args, conn)`` in a spawned process of its own and returns what it sends."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise AssertionError(f"{target.__name__} sent nothing within {timeout} s")
        return parent.recv()
    finally:
        parent.close()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)


def _bare_child(up: Connection, down: Connection, count: int, conn: Connection) -> None:
    up_fd, down_fd = up.fileno(), down.fileno()
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        os.write(up_fd, b"x" * 64)
        os.read(down_fd, 1 << 16)
        seconds.append(time.perf_counter() - started)
    conn.send(seconds[WARMUP:])
    conn.close()


def _bare_floor(count: int) -> float:
    """p50 of the same three hops over bare pipes: child -> thread -> thread -> child."""
    ctx = multiprocessing.get_context("spawn")
    up_read, up_write = ctx.Pipe(duplex=False)
    middle_read, middle_write = ctx.Pipe(duplex=False)
    down_read, down_write = ctx.Pipe(duplex=False)

    def hop(source: Connection, sink: Connection) -> None:
        while data := os.read(source.fileno(), 1 << 16):
            os.write(sink.fileno(), data)

    threads = [
        threading.Thread(target=hop, args=(up_read, middle_write), daemon=True),
        threading.Thread(target=hop, args=(middle_read, down_write), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        seconds: list[float] = _in_process(_bare_child, up_write, down_read, count)
    finally:
        for end in (up_write, middle_write):
            end.close()  # end-of-file: both hops return
        for thread in threads:
            thread.join(5)
        for end in (up_read, middle_read, down_read, down_write):
            end.close()
    return statistics.median(seconds)


@pytest.mark.timeout(300)
def test_stress_latency_stages_at_one_connection(stress_logs: Path, figures: Figures) -> None:
    uninstall = install()  # in this process for this test only: the other checks run unstamped
    try:
        with _probe_server(stress_logs) as (server, replier):
            assert server.port is not None
            bodies, seconds, plain_seconds = [], [], []
            for round_ in range(ROUNDS):
                for path in ("/plain", "/probe") if round_ % 2 == 0 else ("/probe", "/plain"):
                    got, took = _in_process(_client, server.port, path, REQUESTS + WARMUP)
                    if path == "/probe":
                        bodies += got
                        seconds += took
                    else:
                        plain_seconds += took
        stamped = [{**body, **BY_ID[body["id"]], **replier.stamps[body["id"]]} for body in bodies]
    finally:
        uninstall()
    assert len(plain_seconds) == len(bodies) == REQUESTS * ROUNDS
    floor = _bare_floor(REQUESTS * ROUNDS + WARMUP)

    order = [STAGES[0][1]] + [end for _, _, end in STAGES]
    # One clock for all processes: every request meets the stages in order.
    in_order = sum(all(s[a] <= s[b] for a, b in itertools.pairwise(order)) for s in stamped)
    assert in_order == len(stamped), f"{len(stamped) - in_order} requests with stamps out of order"

    def median_us(start: str, end: str) -> float:
        return float(statistics.median((s[end] - s[start]) / 1e3 for s in stamped))

    rows = [[label, f"{median_us(start, end):.0f}"] for label, start, end in STAGES + WRITES]
    rows.append(["submit to resume (median of the sums)", f"{median_us('submit', 'resumed'):.0f}"])
    rows.append(["bare pipes, the same three hops, no work", f"{floor * 1e6:.0f}"])
    plain_p50, probe_p50 = statistics.median(plain_seconds), statistics.median(seconds)
    rows.append(["client p50: route answered in the child", f"{plain_p50 * 1e6:.0f}"])
    rows.append(["client p50: route through the IPC path", f"{probe_p50 * 1e6:.0f}"])
    figures.table(
        f"one request's way through the IPC path at 1 connection, ReplyBatcher replies (us, medians of "
        f"{REQUESTS * ROUNDS} sequential requests in {ROUNDS} rounds alternating with the plain route)",
        ["stage", "us"],
        rows,
    )
