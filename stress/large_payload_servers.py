"""The servers of the large-payload figures, each in a process of its own so that its CPU and
memory are its own: the in-process ceiling (FastAPI answering in the handler, with the heap
settings of the HTTP worker), the same with glibc's default heap settings ("stock"), the default
path (private pipes), and shared payloads. In the two IPC ones that process is the main process: the
relay and a main loop that answers every blob with the same bytes (the work is nil, so what is
measured is the transport)."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

from fastapi import Request, Response

from isolated_api import IPC, ServerBuilder
from isolated_api.testing import wait_until
from isolated_api.worker.heap_tuning import keep_large_buffers
from stress.servers import Echo, Echoed, echo_direct, echo_ipc

Path = Literal["ceiling", "stock", "pipes", "shared"]
MiB = 1 << 20
# The largest body measured, and what the servers accept.
LARGEST = 64 * MiB
_LIMIT = LARGEST + MiB
OCTET = "application/octet-stream"


@dataclass
class Blob:
    id: str
    data: bytes


async def blob_ipc(request: Request, channel: IPC) -> Response:
    reply = await channel.submit(Blob(uuid.uuid4().hex, await request.body()))
    return Response(reply.data, media_type=OCTET)


async def blob_direct(request: Request) -> Response:
    return Response(await request.body(), media_type=OCTET)


def _answer(request_q: Any, response_q: Any) -> None:
    while True:
        request = request_q.get()
        kind = type(request)
        if kind is Blob:
            response_q.put(Blob(request.id, request.data))
        elif kind is Echo:
            response_q.put(Echoed(request.id, request.text.upper()))
        else:
            return


def _serve(path: Path, conn: Connection) -> None:
    builder = ServerBuilder(f"large-{path}").with_host("127.0.0.1").with_port(0).with_timeout(60.0)
    if path == "ceiling":
        # The heap settings the HTTP worker runs with (heap_tuning.py), so that the IPC paths'
        # ratios to it measure their transport, not glibc's defaults; "stock" keeps those.
        keep_large_buffers(_LIMIT)
    if path in ("ceiling", "stock"):
        routes = builder.routes.with_route("/blob", blob_direct, methods=["POST"]).with_route(
            "/echo", echo_direct, methods=["POST"]
        )
        server = routes.done().uvicorn.with_log_level("error").with_max_body_size(_LIMIT).done().build()
    else:
        ctx = multiprocessing.get_context("spawn")
        request_q, response_q = ctx.Queue(), ctx.Queue()
        threading.Thread(target=_answer, args=(request_q, response_q), daemon=True).start()
        routes = builder.routes.with_route("/blob", blob_ipc, methods=["POST"]).with_route(
            "/echo", echo_ipc, methods=["POST"]
        )
        subprocess = (
            routes.done()
            .uvicorn.with_log_level("error")
            .with_max_body_size(_LIMIT)
            .done()
            .subprocess.with_ipc(request_q, response_q)
            .with_max_message_size(_LIMIT + MiB)
        )
        if path == "shared":
            # One payload of the largest size each way, and room beside it.
            subprocess = subprocess.with_shared_payloads(arena_size=2 * (_LIMIT + 8 * MiB))
        server = subprocess.done().build()

    def report_port() -> None:
        wait_until(lambda: server.is_running, 60.0, f"the {path} server to start")
        conn.send(server.port)

    if path in ("ceiling", "stock"):
        threading.Thread(target=report_port, daemon=True).start()
        server.start()
        return
    server.start_subprocess()
    report_port()
    try:
        conn.recv()  # until the test closes its end
    except EOFError:
        pass
    server.stop(timeout=5.0)


@contextmanager
def large_payload_server(path: Path) -> Iterator[tuple[int, str]]:
    """(pid of the measured process, base URL)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    in_process = path in ("ceiling", "stock")
    process = ctx.Process(target=_serve, args=(path, child), name=f"large-{path}", daemon=in_process)
    process.start()
    child.close()
    try:
        if not parent.poll(90):
            raise RuntimeError(f"the {path} server did not start")
        port: int = parent.recv()
        assert process.pid is not None
        yield process.pid, f"http://127.0.0.1:{port}"
    finally:
        parent.close()  # an IPC server stops then; an in-process one serves until terminated
        process.join(0 if in_process else 10)
        if process.is_alive():
            process.terminate()
            process.join(10)
        if process.is_alive():
            process.kill()
            process.join(5)
