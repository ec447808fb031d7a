"""(h) What the shape of the IPC path costs by itself, apart from the Python on the way: a process
standing in for an HTTP worker writes a small pickled request into a pipe and reads the reply
from another, and the main process answers it

- "relay hop": as the IPC path does: a reader thread reads the pipe and writes the request's
  bytes into a ``multiprocessing.Queue`` (straight into its pipe, as the relay does), which the
  loop thread ``get()``s before it writes the reply (three thread wake-ups a round trip);
- "loop reads the pipe": the loop thread reads the worker's pipe itself (two wake-ups);

beside a bare ``multiprocessing.Queue`` round trip between two processes, the floor the
one-connection figure of ``test_throughput.py`` is read against. The IPC path's p50 over
in-process, less what these shapes cost, is the Python of the path: the worker's framework,
channel and codec, and the relay's routing."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import statistics
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import pytest

from stress.figures import Figures
from stress.queue_floor import bare_queue_round_trip

pytestmark = pytest.mark.stress

ROUND_TRIPS = 3000
WARMUP = 300
ROUNDS = 3
_LENGTH = struct.Struct("!I")


@dataclass
class _Request:
    id: str
    text: str


def _read_frame(fd: int) -> bytes:
    (size,) = _LENGTH.unpack(os.read(fd, _LENGTH.size))
    body = b""
    while len(body) < size:
        body += os.read(fd, size - len(body))
    return body


def _worker(up: int, down: int, result: Connection) -> None:
    seconds: list[float] = []
    for i in range(ROUND_TRIPS + WARMUP):
        data = pickle.dumps(_Request(str(i), "hello world"), pickle.HIGHEST_PROTOCOL)
        started = time.perf_counter()
        os.write(up, _LENGTH.pack(len(data)) + data)
        reply = pickle.loads(_read_frame(down))
        if (reply.id, reply.text) != (str(i), "HELLO WORLD"):  # no result then: the check fails
            raise AssertionError(f"round trip {i} got the reply {reply!r}")
        if i >= WARMUP:
            seconds.append(time.perf_counter() - started)
    os.write(up, _LENGTH.pack(0))
    result.send(statistics.median(seconds))


def _answer(request: _Request, down: int) -> None:
    data = pickle.dumps(_Request(request.id, request.text.upper()), pickle.HIGHEST_PROTOCOL)
    os.write(down, _LENGTH.pack(len(data)) + data)


def _relay(up: int, q: Any) -> None:
    while body := _read_frame(up):
        q._sem.acquire()
        with q._wlock:
            q._writer.send_bytes(body)
    q.put(None)


def _shape(relay_hop: bool) -> float:
    """p50 seconds of a round trip through the worker's pipes, answered in one of the two shapes."""
    # fork: the stand-in worker inherits the raw pipe ends.
    ctx = multiprocessing.get_context("fork")
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    parent, child = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_worker, args=(up_w, down_r, child), daemon=True)
    worker.start()
    q: Any = ctx.Queue()
    try:
        if relay_hop:
            threading.Thread(target=_relay, args=(up_r, q), daemon=True).start()
            while (request := q.get(timeout=30)) is not None:
                _answer(request, down_w)
        else:
            while body := _read_frame(up_r):
                _answer(pickle.loads(body), down_w)
        assert parent.poll(30), "the stand-in worker gave no result"
        p50: float = parent.recv()
        return p50
    finally:
        worker.join(10)
        if worker.is_alive():
            worker.kill()
        q.cancel_join_thread()
        q.close()
        for fd in (up_r, up_w, down_r, down_w):
            os.close(fd)


def test_stress_what_the_shape_of_the_path_costs(figures: Figures) -> None:
    shapes: dict[str, Callable[[], float]] = {
        "relay hop (the IPC path's shape)": lambda: _shape(relay_hop=True),
        "loop reads the worker's pipe": lambda: _shape(relay_hop=False),
        "bare multiprocessing.Queue round trip": lambda: bare_queue_round_trip(ROUND_TRIPS, WARMUP),
    }
    p50s: dict[str, list[float]] = {name: [] for name in shapes}
    for _ in range(ROUNDS):  # interleaved: a slow stretch of the machine hits every shape
        for name, measure in shapes.items():
            p50s[name].append(measure())
    floor = statistics.median(p50s["bare multiprocessing.Queue round trip"])
    rows = [
        [
            name,
            ", ".join(f"{p50 * 1e6:.0f}" for p50 in values),
            f"{statistics.median(values) / floor:.2f}",
        ]
        for name, values in p50s.items()
    ]
    figures.table(
        f"the path's shape alone: a small pickled request and its reply (p50 us of {ROUND_TRIPS} round trips, "
        f"{ROUNDS} interleaved rounds; in bare multiprocessing.Queue round trips)",
        ["shape", "p50 us per round", "round trips"],
        rows,
    )
    # A figure exists only for a run in which every request got its own reply (checked by the
    # stand-in worker) and every message came back through the bare queue.
    assert all(len(values) == ROUNDS for values in p50s.values())
