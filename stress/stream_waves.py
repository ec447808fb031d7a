"""A wave of SSE streams arriving staggered, each asking for its own number of tokens, read in a
process of its own (as ``stress/loadgen.py`` reads unary load) so the client never shares a GIL
with the server it measures.

Every connection is open before the wave starts; stream ``i`` is sent ``i * gap`` seconds after
the first. A token is one ``x`` in the body (the server's SSE frames carry nothing else that is an
``x``), so merged frames still count every token. Per stream: seconds from its send to its first
token (time to first token), to its end, and the tokens it got.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection


@dataclass(frozen=True)
class WaveSpec:
    port: int
    lengths: tuple[int, ...]
    gap: float
    path: str = "/generate"


@dataclass
class StreamFigures:
    tokens: int = 0
    first_token: float = 0.0
    finished: float = 0.0  # seconds since the wave's start
    sent: float = 0.0  # time.perf_counter() when it was sent (CLOCK_MONOTONIC: the same in every process)
    status: int = 0


@dataclass
class WaveResult:
    streams: list[StreamFigures] = field(default_factory=list)
    elapsed: float = 0.0
    error: str = ""

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def token_rate(self) -> float:
        return self.tokens / self.elapsed if self.elapsed else 0.0


async def _one(spec: WaveSpec, index: int, wave_start: float, figures: StreamFigures) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", spec.port, limit=1 << 20)
    body = json.dumps({"tokens": spec.lengths[index]}).encode()
    request = (
        f"POST {spec.path} HTTP/1.1\r\nHost: 127.0.0.1:{spec.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        await asyncio.sleep(max(0.0, wave_start + index * spec.gap - time.perf_counter()))
        sent = figures.sent = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        figures.status = int(head[9:12])
        if b"transfer-encoding: chunked" not in head.lower():
            return
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            data = await reader.readexactly(size + 2)
            tokens = data.count(b"x")
            if tokens and not figures.tokens:
                figures.first_token = time.perf_counter() - sent
            figures.tokens += tokens
        figures.finished = time.perf_counter() - wave_start
    finally:
        writer.close()


async def _wave(spec: WaveSpec) -> WaveResult:
    result = WaveResult(streams=[StreamFigures() for _ in spec.lengths])
    # A little ahead, so every connection is made (and the loop idle) when the first one sends.
    start = time.perf_counter() + 0.2
    await asyncio.gather(*(_one(spec, i, start, result.streams[i]) for i in range(len(spec.lengths))))
    result.elapsed = max(s.finished for s in result.streams)
    return result


def _main(spec: WaveSpec, conn: Connection) -> None:
    try:
        import uvloop

        result = uvloop.run(_wave(spec))
    except Exception as exc:
        result = WaveResult(error=repr(exc))
    conn.send(result)
    conn.close()


def run_wave(spec: WaveSpec, timeout: float = 300.0) -> WaveResult:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_main, args=(spec, child), name="stream-wave", daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f"the stream wave gave no result within {timeout:g} s")
        result: WaveResult = parent.recv()
    finally:
        parent.close()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
    if result.error:
        raise RuntimeError(f"the stream wave failed: {result.error}")
    return result
