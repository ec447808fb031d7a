"""A GPU host whose main loop is written as on one machine, nothing more: read ``request_q``,
answer the jobs it knows, skip anything else. It never answers the framework's messages (it hears
none: pings and cancellations stay in ``EngineHost``); readiness comes from its reading
``request_q``, so a loop busy with a long generation still takes requests.

The tests hold a job by its prompt (``"held..."``) until they hand the loop a permit: a long
generation whose end they choose, without timing anything. Module-level, for ``spawn``.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from typing import Any

from isolated_api import EngineHost

from .remote_engines import CODEC, Job, Result, Token

_ctx = multiprocessing.get_context("spawn")


def plain_loop(request_q: Any, response_q: Any, name: str, permits: Any, reads: Any) -> None:
    while True:
        job = CODEC.decode(request_q.get())  # requests arrive as the codec's bytes
        if isinstance(job, Job):
            reads.put(job.prompt)
            if job.prompt.startswith("held"):
                permits.get(timeout=60)  # the long generation
            if job.tokens:
                for index in range(job.tokens):
                    response_q.put(Token(job.id, index, f"{job.prompt}{index} ", name, index == job.tokens - 1))
            else:
                response_q.put(Result(job.id, job.prompt.upper(), name))


def plain_engine_main(bind: str, name: str, started: Any, permits: Any, reads: Any, reading: Any) -> None:
    """The engine's main process: ``EngineHost`` over two ``multiprocessing`` queues, and the loop
    on its main thread once ``reading`` (an Event) is set: until then, a loop that reads nothing."""
    request_q: Any = multiprocessing.Queue()
    response_q: Any = multiprocessing.Queue()
    host = EngineHost(request_q, response_q, bind=bind, codec=CODEC)
    host.start()
    started.put((host.address, os.getpid()))
    reading.wait(60)
    plain_loop(request_q, response_q, name, permits, reads)


@dataclass
class PlainEngine:
    name: str
    process: Any
    address: str
    permits: Any
    reads: Any
    reading: Any

    def release(self, count: int = 1) -> None:
        """Lets ``count`` held jobs finish."""
        for _ in range(count):
            self.permits.put(None)

    def read(self, timeout: float = 20.0) -> str:
        """The prompt of the next job its loop read."""
        return str(self.reads.get(timeout=timeout))

    def kill(self) -> None:
        self.process.kill()
        self.process.join(10)


def start_plain_engine(name: str, bind: str = "tcp://127.0.0.1:0", *, reading: bool = True) -> PlainEngine:
    started, permits, reads, go = _ctx.Queue(), _ctx.Queue(), _ctx.Queue(), _ctx.Event()
    if reading:
        go.set()
    process = _ctx.Process(target=plain_engine_main, args=(bind, name, started, permits, reads, go), daemon=True)
    process.start()
    try:
        address, _pid = started.get(timeout=30)
    except Exception:
        process.kill()
        process.join(10)
        raise
    return PlainEngine(name, process, address, permits, reads, go)
