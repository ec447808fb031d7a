"""The servers the remote-engine figures compare: the same routes and the same main loop, once
behind the single-host pipe path (``with_ipc``, the loop in this process) and once behind an
``EngineHost`` in a process of its own, dialled over TCP on 127.0.0.1 (``with_engines``). Both use
one ``MsgspecCodec``, the codec a network needs, so the difference is the transport."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import msgspec
from pydantic import BaseModel
from starlette.responses import StreamingResponse

from isolated_api import IPC, EngineHost, MsgspecCodec, Server
from stress.servers import _tokens_as_text, close_queues, loopback_builder


class Ask(msgspec.Struct, tag=True):
    id: str
    text: str


class Told(msgspec.Struct, tag=True):
    id: str
    text: str


class Count(msgspec.Struct, tag=True):
    id: str
    count: int


class Tick(msgspec.Struct, tag=True):
    id: str
    is_final: bool = False


CODEC = MsgspecCodec(Ask, Told, Count, Tick)
_ids = iter(range(1 << 62))


def _next_id() -> str:
    return f"{time.monotonic_ns()}-{next(_ids)}"


class AskBody(BaseModel):
    text: str


class CountBody(BaseModel):
    count: int


async def ask_route(body: AskBody, channel: IPC) -> AskBody:
    reply = await channel.submit(Ask(_next_id(), body.text))
    return AskBody(text=reply.text)


async def count_route(body: CountBody, channel: IPC) -> StreamingResponse:
    stream = channel.submit_streaming(Count(_next_id(), body.count), buffer_size=4096)
    return await _tokens_as_text(stream, lambda chunk: True)


def answer_loop(request_q: Any, response_q: Any, delay: float = 0.0) -> None:
    """The main loop users write: one request at a time, ``response_q.put`` per reply (after
    ``delay`` seconds of "work" for an ``Ask``). Ends on ``None``."""
    decode = CODEC.decode
    while True:
        item = request_q.get()
        if item is None:
            return
        request = decode(item)
        # response_q.put looked up per reply, as users write it: on the pipe path this loop starts
        # before the server, and a put bound then would be the queue's own, not the one the relay
        # installs while it runs (isolated_api/main/local_put.py).
        if type(request) is Ask:
            if delay:
                time.sleep(delay)
            response_q.put(Told(request.id, request.text.upper()))
        elif type(request) is Count:
            last = request.count - 1
            for i in range(request.count):
                response_q.put(Tick(request.id, i == last))


def _engine_process(bind: str, delay: float, started: Any, stop: Any) -> None:
    request_q: queue.Queue[Any] = queue.Queue()
    response_q: queue.Queue[Any] = queue.Queue()
    host = EngineHost(request_q, response_q, bind=bind, codec=CODEC)
    host.start()
    loop = threading.Thread(target=answer_loop, args=(request_q, response_q, delay), daemon=True)
    loop.start()
    started.put(host.address)
    stop.wait()
    request_q.put(None)
    loop.join(5)
    host.stop()


@contextmanager
def engine_processes(count: int, delay: float = 0.0) -> Iterator[list[str]]:
    """``count`` engine hosts, each in a process of its own; yields their addresses."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    started = ctx.Queue()
    processes = [
        ctx.Process(target=_engine_process, args=("tcp://127.0.0.1:0", delay, started, stop), daemon=True)
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    try:
        yield [started.get(timeout=30) for _ in processes]
    finally:
        stop.set()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
        close_queues(started)


def _builder(name: str) -> Any:
    return (
        loopback_builder(name)
        .routes.with_route("/ask", ask_route, methods=["POST"])
        .with_route("/count", count_route, methods=["POST"])
        .done()
    )


def _wait_engines_ready(url: str, count: int) -> None:
    import httpx

    from isolated_api.testing import wait_until

    def ready() -> bool:
        try:
            body = httpx.get(f"{url}/health/ready", timeout=2).json()
        except httpx.HTTPError:
            return False
        return bool(sum(e["state"] == "ready" for e in body.get("engines", [])) == count)

    wait_until(ready, 30, f"{count} engine(s) ready")


@contextmanager
def remote_server(log_dir: Path, engines: int = 1, delay: float = 0.0) -> Iterator[tuple[Server, str]]:
    """An API host whose work runs on ``engines`` engine processes over TCP."""
    with ExitStack() as stack:
        addresses = stack.enter_context(engine_processes(engines, delay))
        server = (
            _builder("stress-remote")
            .subprocess.with_engines(*addresses)
            .with_codec(CODEC)
            .with_max_pending(4096)
            .with_log_file(str(log_dir / f"stress-remote-{engines}-child.log"))
            .done()
            .build()
        )
        server.start_subprocess()
        stack.callback(server.stop, 5.0)
        url = f"http://127.0.0.1:{server.port}"
        _wait_engines_ready(url, engines)
        yield server, url


@contextmanager
def pipe_server(log_dir: Path, delay: float = 0.0) -> Iterator[tuple[Server, str]]:
    """The single-host path: the same loop in this process, behind ``with_ipc``."""
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    loop = threading.Thread(target=answer_loop, args=(request_q, response_q, delay), daemon=True)
    loop.start()
    server = (
        _builder("stress-pipe")
        .subprocess.with_ipc(request_q, response_q)
        .with_codec(CODEC)
        .with_max_pending(4096)
        .with_log_file(str(log_dir / "stress-pipe-child.log"))
        .done()
        .build()
    )
    server.start_subprocess()
    try:
        yield server, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(timeout=5.0)
        request_q.put(None)
        loop.join(5)
        close_queues(request_q, response_q)
