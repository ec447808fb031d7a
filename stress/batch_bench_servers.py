"""The servers issue 27's benchmark compares, all over one ``FakeGPU`` model and 2 HTTP workers.

Unary (``POST /infer``, ``{"input": "..."}`` -> ``{"output": "..."}``):
- ``handle``: our ``Engine.handle``, one model call per request;
- ``batch``: ``engine.batch(Infer, max_batch_size=32, max_wait=0.002)``, one call per batch;
- ``batch-nowait``: the same with ``max_wait=0`` (measured at one client only: the batcher's own
  cost at batch size 1, without its 2 ms wait for company);
- LitServe, batched the same way: ``stress/litserve_server.py``, a process tree of its own.

Streams (``POST /generate``, ``{"tokens": n}`` -> SSE, one ``x`` per token):
- ``steps``: ``engine.steps(Gen, stepper, max_active=32)``, continuous batching (joins between steps);
- ``static``: a loop that takes up to 32 waiting streams (``collect``) and steps them until the last
  one ends; newcomers wait for the next batch (no joins);
- ``per-request``: ``Engine.handle`` with a generator, one model call per token of each stream.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from isolated_api import (
    Done,
    Engine,
    IPCChannel,
    ReplyBatcher,
    Server,
    ServerBuilder,
    StreamChunk,
    collect,
    new_request_id,
    sse_response,
)
from stress.fake_gpu import MAX_BATCH, MAX_WAIT, WORKERS, FakeGPU

UnaryMode = Literal["handle", "batch", "batch-nowait"]
StreamMode = Literal["steps", "static", "per-request"]


@dataclass(frozen=True)
class Infer:
    id: str
    text: str


@dataclass(frozen=True)
class Gen:
    id: str
    tokens: int


class InferBody(BaseModel):
    input: str


class GenBody(BaseModel):
    tokens: int


async def infer_route(body: InferBody, request: Request) -> dict[str, str]:
    # The channel from app.state and new_request_id(): the fast path the README recommends, so
    # the HTTP side costs what it costs at its best and the comparison is about the batching.
    channel: IPCChannel = request.app.state.ipc_channel
    reply = await channel.submit(Infer(new_request_id(), body.input))
    return {"output": reply.data}


def merge_tokens(older: StreamChunk, newer: StreamChunk) -> StreamChunk:
    return StreamChunk(newer.id, (older.data or "") + (newer.data or ""), newer.is_final)


def _token_text(chunk: StreamChunk) -> str:
    return str(chunk.data or "")


async def generate_route(body: GenBody, request: Request) -> Response:
    channel: IPCChannel = request.app.state.ipc_channel
    stream = channel.submit_streaming(Gen(new_request_id(), body.tokens), merge=merge_tokens)
    return await sse_response(stream, _token_text)


# -- the main process's sides ---------------------------------------------------------------------


class Unbatched:
    def __init__(self, gpu: FakeGPU) -> None:
        self.gpu = gpu

    def __call__(self, request: Infer) -> str:
        self.gpu.run(1)
        return request.text.upper()


class Batched:
    def __init__(self, gpu: FakeGPU) -> None:
        self.gpu = gpu

    def __call__(self, requests: list[Infer]) -> list[Any]:
        self.gpu.run(len(requests))
        return [r.text.upper() for r in requests]


class Stepper:
    """Continuous batching: one model call per step over every active stream, one token each."""

    def __init__(self, gpu: FakeGPU) -> None:
        self.gpu = gpu
        self._sent: dict[str, int] = {}
        self._lock = threading.Lock()

    def join(self, requests: list[Gen]) -> None:
        with self._lock:
            for request in requests:
                self._sent[request.id] = 0

    def step(self, active: list[Gen]) -> list[Any]:
        self.gpu.run(len(active))
        out: list[Any] = []
        with self._lock:
            for request in active:
                self._sent[request.id] += 1
                out.append(Done("x") if self._sent[request.id] >= request.tokens else "x")
        return out

    def leave(self, request: Gen, why: str) -> None:
        with self._lock:
            self._sent.pop(request.id, None)


class PerRequest:
    """One generator per stream: every token is a model call of its own."""

    def __init__(self, gpu: FakeGPU) -> None:
        self.gpu = gpu

    def __call__(self, request: Gen) -> Iterator[str]:
        for _ in range(request.tokens):
            self.gpu.run(1)
            yield "x"


_STOP = "__static_batches_stop__"


class StaticBatches:
    """Static batching, written as a plain main loop: ``collect`` up to 32 waiting streams, step them
    together until the last one ends (finished ones stop costing), then the next batch. Messages
    that are not ``Gen`` (the framework's pings and cancels) are skipped."""

    def __init__(self, request_q: Any, response_q: Any, gpu: FakeGPU) -> None:
        self.request_q = request_q
        self.gpu = gpu
        self._batcher = ReplyBatcher(response_q)
        self._thread = threading.Thread(target=self._run, name="static-batches", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = collect(self.request_q, max_size=MAX_BATCH, max_wait=MAX_WAIT)
            live = [(r, 0) for r in batch if type(r) is Gen]
            while live:
                self.gpu.run(len(live))
                chunks = [StreamChunk(r.id, "x", sent + 1 >= r.tokens) for r, sent in live]
                self._batcher.put_many(chunks)
                live = [(r, sent + 1) for r, sent in live if sent + 1 < r.tokens]
            if _STOP in batch:
                return

    def stop(self) -> None:
        self.request_q.put(_STOP)
        self._thread.join(10)
        self._batcher.close()


def _builder(name: str, log_dir: Path) -> ServerBuilder:
    return (
        ServerBuilder(name)
        .with_host("127.0.0.1")
        .with_port(0)
        .with_timeout(60.0)
        .uvicorn.with_workers(WORKERS)
        .done()
        .subprocess.with_max_pending(4096)
        .with_log_file(str(log_dir / f"{name}-child.log"))
        .done()
    )


def _close(*queues: Any) -> None:
    for q in queues:
        q.cancel_join_thread()
        q.close()


@contextmanager
def unary_server(mode: UnaryMode, gpu: FakeGPU, log_dir: Path) -> Iterator[Server]:
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    engine = Engine(request_q, response_q, concurrency=8)
    if mode == "handle":
        engine.handle(Infer, Unbatched(gpu))
    else:
        max_wait = MAX_WAIT if mode == "batch" else 0.0
        engine.batch(Infer, max_batch_size=MAX_BATCH, max_wait=max_wait)(Batched(gpu))
    server = (
        _builder(f"bench-unary-{mode}", log_dir)
        .routes.with_route("/infer", infer_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .done()
        .build()
    )
    engine.start()
    try:
        server.start_subprocess()
        try:
            yield server
        finally:
            server.stop(timeout=5.0)
    finally:
        engine.stop(timeout=5.0)
        _close(request_q, response_q)


@contextmanager
def stream_server(mode: StreamMode, gpu: FakeGPU, log_dir: Path) -> Iterator[Server]:
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    engine: Engine | None = None
    loop: StaticBatches | None = None
    if mode == "static":
        loop = StaticBatches(request_q, response_q, gpu)
    else:
        # per-request: room for every stream at once, so each is served as soon as it arrives.
        engine = Engine(request_q, response_q, concurrency=MAX_BATCH)
        if mode == "steps":
            engine.steps(Gen, Stepper(gpu), max_active=MAX_BATCH)
        else:
            engine.handle(Gen, PerRequest(gpu))
        engine.start()
    server = (
        _builder(f"bench-stream-{mode}", log_dir)
        .routes.with_route("/generate", generate_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .done()
        .build()
    )
    try:
        server.start_subprocess()
        try:
            yield server
        finally:
            server.stop(timeout=5.0)
    finally:
        if engine is not None:
            engine.stop(timeout=5.0)
        if loop is not None:
            loop.stop()
        _close(request_q, response_q)
