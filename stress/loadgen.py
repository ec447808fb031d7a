"""A small HTTP/1.1 load generator that runs in its own process, so the client never shares a GIL
(or a core's worth of Python) with the server it measures.

Why not httpx here: its client spends ~150-300 us of Python per request, more than the server
under test; at 2 cores it would measure itself. This speaks just enough HTTP/1.1 over keep-alive
connections (Content-Length and chunked bodies) to drive a JSON POST route, like wrk does, and is
used only against our own servers on loopback. The figures come back over a pipe.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Literal

Mode = Literal["unary", "stream", "burst"]


@dataclass(frozen=True)
class LoadSpec:
    port: int
    path: str
    body: bytes
    concurrency: int
    requests: int = 0
    warmup: int = 0
    # Soak: keep going for this many seconds instead of a fixed number of requests.
    duration: float = 0.0
    mode: Mode = "unary"
    host: str = "127.0.0.1"


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    chunks: int = 0
    first_chunk: list[float] = field(default_factory=list)
    # burst: seconds from the burst's start to each response, with its status.
    finished: list[tuple[int, float]] = field(default_factory=list)
    error: str = ""

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    @property
    def chunk_rate(self) -> float:
        return self.chunks / self.elapsed if self.elapsed else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[min(998, max(0, round(q * 1000) - 1))]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.request = request

    async def exchange(self, result: LoadResult, record: bool, stream: bool) -> int:
        started = time.perf_counter()
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            first = True
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                data = await self.reader.readexactly(size + 2)
                if record:
                    if first:
                        result.first_chunk.append(time.perf_counter() - started)
                    result.chunks += data.count(b"\n") - 1
                first = False
        else:
            start = lower.index(b"content-length:") + len(b"content-length:")
            length = int(lower[start : lower.index(b"\r\n", start)])
            await self.reader.readexactly(length)
        if record:
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] += 1
        return status

    def close(self) -> None:
        self.writer.close()


async def _connect(spec: LoadSpec) -> _Connection:
    reader, writer = await asyncio.open_connection(spec.host, spec.port, limit=1 << 20)
    request = (
        f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(spec.body)}\r\n\r\n"
    ).encode() + spec.body
    return _Connection(reader, writer, request)


async def _run(spec: LoadSpec) -> LoadResult:
    result = LoadResult()
    connections = await asyncio.gather(*(_connect(spec) for _ in range(spec.concurrency)))
    stream = spec.mode == "stream"
    try:
        if spec.mode == "burst":
            await _burst(connections, result)
            return result
        # Warm-up on the same connections: first-request costs (imports, caches) are not the figure.
        todo = [spec.warmup]

        async def worker(conn: _Connection, record: bool, deadline: float) -> None:
            while todo[0] > 0 or (deadline and time.perf_counter() < deadline):
                todo[0] -= 1
                await conn.exchange(result, record, stream)

        await asyncio.gather(*(worker(c, False, 0.0) for c in connections))
        todo[0] = spec.requests
        started = time.perf_counter()
        deadline = started + spec.duration if spec.duration else 0.0
        await asyncio.gather(*(worker(c, True, deadline) for c in connections))
        result.elapsed = time.perf_counter() - started
        return result
    finally:
        for conn in connections:
            conn.close()


async def _burst(connections: list[_Connection], result: LoadResult) -> None:
    # Every connection is open before the first byte is sent: the burst is as simultaneous as a
    # single client can make it.
    started = time.perf_counter()

    async def one(conn: _Connection) -> None:
        status = await conn.exchange(result, True, False)
        result.finished.append((status, time.perf_counter() - started))

    await asyncio.gather(*(one(c) for c in connections))
    result.elapsed = time.perf_counter() - started


def _run_on_fastest_loop(spec: LoadSpec) -> LoadResult:
    # uvloop, as uvicorn uses on both servers: a slower client loop would be the bottleneck.
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        return asyncio.run(_run(spec))
    return uvloop.run(_run(spec))


def _main(spec: LoadSpec, conn: Connection) -> None:
    try:
        result = _run_on_fastest_loop(spec)
    except Exception as exc:
        result = LoadResult(error=repr(exc))
    conn.send(result)
    conn.close()


class LoadJob:
    """A load run in a spawned process; ``result()`` waits for its figures."""

    def __init__(self, spec: LoadSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._parent, child = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_main, args=(spec, child), name="loadgen", daemon=True)
        self._process.start()
        child.close()

    def result(self, timeout: float = 240.0) -> LoadResult:
        try:
            if not self._parent.poll(timeout):
                raise TimeoutError(f"the load generator gave no result within {timeout:g} s")
            result: LoadResult = self._parent.recv()
        finally:
            self._parent.close()
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        if result.error:
            raise RuntimeError(f"the load generator failed: {result.error}")
        return result


def run_load(spec: LoadSpec, timeout: float = 240.0) -> LoadResult:
    return LoadJob(spec).result(timeout)
