"""The servers the capacity checks measure: the same FastAPI routes answered through the IPC path
(subprocess mode, a main-process loop that replies at once) and in-process (the ceiling: the same
framework in direct mode, in a process of its own, answering in the handler)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import StreamingResponse

from features.backpressure.backpressure import load_route
from isolated_api import IPC, Engine, IPCChannel, ReplyBatcher, Server, ServerBuilder, new_request_id
from isolated_api.testing import wait_until
from isolated_api.worker.chunk_stream import END, ChunkStream

TOKEN = b"tok\n"
BURST = 64  # as features/streaming/sse.py


@dataclass
class Echo:
    id: str
    text: str


@dataclass
class Echoed:
    id: str
    text: str


@dataclass
class TokenRequest:
    id: str
    count: int


@dataclass
class TokenChunk:
    id: str
    is_final: bool = False


@dataclass
class EngineTokens:
    id: str
    count: int


def engine_tokens(request: EngineTokens) -> Iterator[int]:
    """An Engine generator handler: one chunk per token, as fast as the engine takes them."""
    yield from range(request.count)


@dataclass
class Probe:
    id: str
    hold: bool = False


@dataclass
class ProbeReply:
    id: str
    put_at: float = field(default=0.0)


class EchoBody(BaseModel):
    text: str


class StreamBody(BaseModel):
    count: int


# -- the routes: IPC and in-process twins ------------------------------------------------------


async def echo_ipc(body: EchoBody, channel: IPC) -> EchoBody:
    reply = await channel.submit(Echo(uuid.uuid4().hex, body.text))
    return EchoBody(text=reply.text)


async def echo_ipc_state(body: EchoBody, request: Request) -> EchoBody:
    # The channel from app.state: the same call without FastAPI's dependency machinery (measured
    # with callgrind: ~70k instructions per request, ~16% of this whole route in-process), and
    # an id from new_request_id() (~0.3 us) instead of uuid4 (3-4 us).
    channel: IPCChannel = request.app.state.ipc_channel
    reply = await channel.submit(Echo(new_request_id(), body.text))
    return EchoBody(text=reply.text)


async def echo_direct(body: EchoBody) -> EchoBody:
    return EchoBody(text=body.text.upper())


async def _tokens_as_text(stream: ChunkStream, is_token: Callable[[Any], bool]) -> StreamingResponse:
    # Admission and the first chunk before the 200, as the streaming slice does.
    first = await anext(stream)

    async def tokens() -> AsyncIterator[bytes]:
        try:
            waiting = int(is_token(first))
            while True:
                # As sse_response does: tokens already waiting go out in the same write (the
                # client reads the same bytes; one send per burst instead of one per token).
                while stream.ready and waiting < BURST:
                    chunk = await stream.next_chunk()
                    if chunk is END:
                        break
                    waiting += is_token(chunk)
                if waiting:
                    yield TOKEN * waiting
                chunk = await stream.next_chunk()
                if chunk is END:
                    return
                waiting = int(is_token(chunk))
        finally:
            await stream.aclose()

    return StreamingResponse(tokens(), media_type="text/plain")


async def stream_ipc(body: StreamBody, channel: IPC) -> StreamingResponse:
    stream = channel.submit_streaming(TokenRequest(uuid.uuid4().hex, body.count), buffer_size=4096)
    return await _tokens_as_text(stream, lambda chunk: True)


async def stream_engine(body: StreamBody, channel: IPC) -> StreamingResponse:
    """The same stream from an ``Engine`` generator handler (``EngineTokens`` below): its final
    ``StreamChunk`` carries the generator's return value, not a token."""
    stream = channel.submit_streaming(EngineTokens(uuid.uuid4().hex, body.count), buffer_size=4096)
    return await _tokens_as_text(stream, lambda chunk: not chunk.is_final)


async def stream_direct(body: StreamBody) -> StreamingResponse:
    async def tokens() -> AsyncIterator[bytes]:
        for _ in range(body.count):
            yield TOKEN

    return StreamingResponse(tokens(), media_type="text/plain")


# -- the main process: replies at once ---------------------------------------------------------


class Echoer:
    """The main process's loop: one thread, every request answered as soon as it is read (the
    cost measured is the framework's, not the work's). ``Probe(hold=True)`` is never answered.
    ``batched``: replies go through a ``ReplyBatcher`` instead of ``response_q.put``."""

    def __init__(self, request_q: Any, response_q: Any, *, batched: bool = False) -> None:
        self.request_q = request_q
        self.response_q = response_q
        self.held = 0
        self._batcher = ReplyBatcher(response_q) if batched else None
        self._thread = threading.Thread(target=self._run, name="echoer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        get = self.request_q.get
        batcher = self._batcher
        response_q = self.response_q
        while True:
            request = get()
            # ``response_q.put`` looked up per reply, as the README's loop does: this thread
            # starts before the server, and a put bound then would be the queue's own, not the
            # one the relay installs while it runs (isolated_api/main/local_put.py).
            put = response_q.put if batcher is None else batcher.put
            kind = type(request)
            if kind is Echo:
                put(Echoed(request.id, request.text.upper()))
            elif kind is TokenRequest:
                last = request.count - 1
                for i in range(request.count):
                    put(TokenChunk(request.id, i == last))
            elif kind is Probe:
                if request.hold:
                    self.held += 1
                else:
                    put(ProbeReply(request.id, time.perf_counter()))
            else:
                return

    def stop(self) -> None:
        self.request_q.put(None)
        self._thread.join(5)
        if self._batcher is not None:
            self._batcher.close()


def close_queues(*queues: Any) -> None:
    for q in queues:
        q.cancel_join_thread()
        q.close()


def loopback_builder(name: str) -> ServerBuilder:
    return ServerBuilder(name).with_host("127.0.0.1").with_port(0).with_timeout(30.0)


@contextmanager
def ipc_server(
    log_dir: Path, *, max_pending: int = 4096, workers: int = 1, batched: bool = False, busy_wait: float = 0.0
) -> Iterator[tuple[Server, str]]:
    """The IPC path: an HTTP child and, in this process, the relay and an ``Echoer`` (replying
    through a ``ReplyBatcher`` when ``batched``); ``busy_wait``: ``with_reply_busy_wait``."""
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    echoer = Echoer(request_q, response_q, batched=batched)
    log_name = f"stress-ipc{'-batched' if batched else ''}{'-busy' if busy_wait else ''}-child.log"
    server = (
        loopback_builder("stress-ipc")
        .routes.with_route("/echo", echo_ipc, methods=["POST"])
        .with_route("/echo-state", echo_ipc_state, methods=["POST"])
        .with_route("/stream", stream_ipc, methods=["POST"])
        .with_route("/load", load_route)
        .done()
        .uvicorn.with_workers(workers)
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .with_max_pending(max_pending)
        .with_reply_busy_wait(busy_wait)
        .with_log_file(str(log_dir / log_name))
        .done()
        .build()
    )
    server.start_subprocess()
    try:
        yield server, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(timeout=5.0)
        echoer.stop()
        close_queues(request_q, response_q)


@contextmanager
def engine_server(log_dir: Path) -> Iterator[tuple[Server, str]]:
    """The IPC path with the ``Engine`` companion as the main process's loop."""
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    engine = Engine(request_q, response_q, concurrency=64)
    engine.handle(EngineTokens, engine_tokens)
    server = (
        loopback_builder("stress-engine")
        .routes.with_route("/stream", stream_engine, methods=["POST"])
        .with_route("/load", load_route)
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .with_max_pending(4096)
        .with_log_file(str(log_dir / "stress-engine-child.log"))
        .done()
        .build()
    )
    engine.start()
    server.start_subprocess()
    try:
        yield server, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(timeout=5.0)
        engine.stop(timeout=5.0)
        close_queues(request_q, response_q)


def _serve_ceiling(conn: Connection) -> None:
    server = (
        ServerBuilder("stress-ceiling")
        .with_host("127.0.0.1")
        .with_port(0)
        .routes.with_route("/echo", echo_direct, methods=["POST"])
        .with_route("/stream", stream_direct, methods=["POST"])
        .done()
        .uvicorn.with_log_level("error")
        .done()
        .build()
    )

    def report_port() -> None:
        wait_until(lambda: server.is_running, 30.0, "the ceiling server to start")
        conn.send(server.port)
        conn.close()

    threading.Thread(target=report_port, daemon=True).start()
    # The main thread serves, so uvicorn handles SIGTERM as it would in production.
    server.start()


@contextmanager
def ceiling_server() -> Iterator[tuple[int, str]]:
    """The in-process ceiling: the same routes answered in the handler, in a process of its own
    (as the IPC path's HTTP child is), so the two are measured under the same conditions."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_serve_ceiling, args=(child,), name="stress-ceiling", daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(60):
            raise RuntimeError("the ceiling server did not start")
        port: int = parent.recv()
        assert process.pid is not None
        yield process.pid, f"http://127.0.0.1:{port}"
    finally:
        parent.close()
        process.terminate()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def threads_cpu_seconds(pid: int, skip: frozenset[int] = frozenset()) -> float:
    """CPU seconds of ``pid``'s live threads but those in ``skip`` (native thread ids), to the
    nanosecond (each thread's ``schedstat``): ``cpu_seconds`` counts whole 10 ms ticks, too coarse
    for a few round trips. Threads that ended are not counted, so use it on processes whose threads
    live as long as the measurement. A process that just ended counts 0."""
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return 0.0
    total = 0
    for tid in tids:
        if tid in skip:
            continue
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return total / 1e9


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(") ", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
