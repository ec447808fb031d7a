"""Fault matrix, issue 28 item 1: the message cap of a worker's pipes is a status, never a kill.

| condition                                         | before                         | after                          |
|---------------------------------------------------|--------------------------------|--------------------------------|
| body whose frame passes the cap (no body limit)   | worker SIGKILLed, peers die    | 413 JSON, peers answered       |
| max_body_size above max_message_size              | accepted (then the kill above) | ConfigError naming the cap     |
| reply whose frame passes the cap                  | written (no cap on replies)    | 502 JSON for it, peers fine    |
| reply larger than the stall bound, peers replying | "stopped reading": killed      | delivered, same worker         |

A small ``max_message_size`` keeps most rows cheap; one row sends a body past the real 64 MiB.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import Request

from isolated_api import IPC, ConfigError, Server, sse_response
from isolated_api.testing import pid_alive, running, spawn_queues, wait_until
from tests.helpers import Done, MainLoop, Work, builder, new_id, upper_route

MiB = 1024 * 1024
SMALL_CAP = 1 * MiB
HELD = 3


@dataclass
class Blob:
    id: str
    data: bytes


async def upload_route(request: Request, channel: IPC) -> dict[str, Any]:
    """The raw body goes to the main process as bytes; it answers with their length."""
    reply = await channel.submit(Blob(new_id(), await request.body()))
    return {"size": int(reply.text), "pid": os.getpid()}


@dataclass
class Chunk:
    id: str
    text: str
    is_final: bool


async def stream_route(request: Request, size: int, channel: IPC) -> Any:
    """A stream whose first chunk is ``size`` characters, then one small final chunk."""
    stream = channel.submit_streaming(Work(new_id(), f"stream:{size}"))
    return await sse_response(stream, lambda chunk: str(len(chunk.text)), request=request)


async def sized_reply_route(size: int, channel: IPC, wait: bool = False) -> dict[str, Any]:
    """Asks the main process for a reply of ``size`` characters (``wait``: once it is told to go)."""
    reply = await channel.submit(Work(new_id(), f"{'wait' if wait else 'sized'}:{size}"))
    return {"size": len(reply.text), "pid": os.getpid()}


class _Behaviour:
    """The main loop: sizes blobs, builds sized replies, and holds "hold" requests until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.go = threading.Event()
        self.blobs = 0
        self.streams: queue.Queue[Work] = queue.Queue()

    def __call__(self, request: Any) -> Any:
        if isinstance(request, Blob):
            self.blobs += 1
            return Done(request.id, str(len(request.data)))
        if request.text.startswith("stream:"):
            self.streams.put(request)
            return None
        if request.text.startswith("wait:"):
            self.go.wait(60)
        if request.text.startswith(("sized:", "wait:")):
            return Done(request.id, "x" * int(request.text.split(":")[1]))
        if request.text == "hold":
            self.release.wait(60)
        return Done(request.id, request.text.upper())


def _server(queues: tuple[Any, Any], *, cap: int | None, max_queued: int | None = None) -> Server:
    subprocess = (
        builder("message-cap")
        .with_timeout(30)
        .routes.with_route("/upload", upload_route, methods=["POST"])
        .with_route("/sized/{size}", sized_reply_route)
        .with_route("/stream/{size}", stream_route)
        .with_route("/upper", upper_route, methods=["POST"])
        .done()
        .uvicorn.with_max_body_size(None)
        .done()
        .subprocess.with_ipc(*queues)
    )
    if cap is not None:
        subprocess = subprocess.with_max_message_size(cap)
    if max_queued is not None:
        subprocess = subprocess.with_stalled_worker_limits(max_queued_bytes=max_queued)
    return subprocess.done().build()


@pytest.fixture
def held() -> Iterator[tuple[_Behaviour, ThreadPoolExecutor]]:
    behaviour = _Behaviour()
    pool = ThreadPoolExecutor(HELD + 2)
    try:
        yield behaviour, pool
    finally:
        behaviour.release.set()
        behaviour.go.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _hold(url: str, pool: ThreadPoolExecutor, loop: MainLoop) -> list[Future[httpx.Response]]:
    """``HELD`` requests in flight on the worker, each held by the main loop until released."""
    futures = [pool.submit(httpx.post, f"{url}/upper", json={"text": "hold"}, timeout=30) for _ in range(HELD)]
    loop.wait_received(HELD)
    return futures


def _check_held_answered(futures: list[Future[httpx.Response]]) -> None:
    for future in futures:
        answer = future.result(30)
        assert answer.status_code == 200 and answer.json()["text"] == "HOLD"


def _one_worker_pid(server: Server) -> int:
    (process,) = server.processes
    assert process.pid is not None
    return process.pid


def _body_over_cap_is_413(cap: int | None, body_size: int, held: tuple[_Behaviour, ThreadPoolExecutor]) -> None:
    behaviour, pool = held
    with spawn_queues() as queues:
        loop = MainLoop(*queues, behaviour).start()
        server = _server(queues, cap=cap)
        try:
            with running(server) as url:
                pid = _one_worker_pid(server)
                futures = _hold(url, pool, loop)
                answer = httpx.post(f"{url}/upload", content=b"\0" * body_size, timeout=60)
                assert answer.status_code == 413, answer.text
                assert "max_message_size" in answer.json()["detail"]
                assert behaviour.blobs == 0  # nothing reached the main process
                behaviour.release.set()
                _check_held_answered(futures)
                # The worker kept serving: an upload within the cap goes through, same process.
                small = httpx.post(f"{url}/upload", content=b"\0" * 1000, timeout=30)
                assert small.status_code == 200 and small.json() == {"size": 1000, "pid": pid}
                assert _one_worker_pid(server) == pid
        finally:
            loop.stop()


def test_message_cap_body_over_the_cap_is_413_and_the_worker_keeps_serving(
    held: tuple[_Behaviour, ThreadPoolExecutor],
) -> None:
    """Steps: no body limit, max_message_size 1 MiB; three requests held in flight by the main
    loop; a 2 MiB upload. Expect: 413 with a JSON detail naming max_message_size, nothing reached
    the main process, the three held requests answered 200 once released, a small upload served by
    the same worker pid."""
    _body_over_cap_is_413(SMALL_CAP, 2 * MiB, held)


def test_message_cap_default_64_mib_body_over_it_is_413_not_a_kill(
    held: tuple[_Behaviour, ThreadPoolExecutor],
) -> None:
    """The real default: no body limit, the default cap; a 64 MiB body (its frame, with the id and
    the pickle's few bytes, passes the 64 MiB cap). Expect the same as with a small cap: 413, the
    held requests answered, the same pid."""
    _body_over_cap_is_413(None, 64 * MiB, held)


def test_message_cap_a_body_limit_above_the_cap_is_a_config_error_naming_it() -> None:
    """A limit the worker could never honour is refused by build(), naming the cap and its setting;
    a limit equal to the cap, or none, is accepted."""
    queues = (queue.Queue[Any](), queue.Queue[Any]())
    base = builder("cap-config").subprocess.with_ipc(*queues).with_max_message_size(SMALL_CAP).done()
    with pytest.raises(ConfigError, match=r"max_message_size \(1048576 bytes\).*with_max_message_size"):
        base.uvicorn.with_max_body_size(SMALL_CAP + 1).done().build()
    default_cap = builder("cap-default").subprocess.with_ipc(*queues).done()
    with pytest.raises(ConfigError, match=r"max_message_size \(67108864 bytes\)"):
        default_cap.uvicorn.with_max_body_size(64 * MiB + 1).done().build()
    base.uvicorn.with_max_body_size(SMALL_CAP).done().build()
    base.uvicorn.with_max_body_size(None).done().build()


def test_message_cap_reply_over_the_cap_fails_that_request_alone_with_502(
    held: tuple[_Behaviour, ThreadPoolExecutor],
) -> None:
    """Steps: max_message_size 1 MiB; three requests held in flight; a 2 MiB reply asked for.
    Expect: 502 with a JSON detail naming max_message_size, the held requests answered 200, a reply
    within the cap served by the same worker pid."""
    behaviour, pool = held
    with spawn_queues() as queues:
        loop = MainLoop(*queues, behaviour).start()
        server = _server(queues, cap=SMALL_CAP)
        try:
            with running(server) as url:
                pid = _one_worker_pid(server)
                futures = _hold(url, pool, loop)
                answer = httpx.get(f"{url}/sized/{2 * MiB}", timeout=30)
                assert answer.status_code == 502, answer.text
                assert "max_message_size" in answer.json()["detail"]
                behaviour.release.set()
                _check_held_answered(futures)
                within = httpx.get(f"{url}/sized/{SMALL_CAP // 2}", timeout=30)
                assert within.status_code == 200 and within.json() == {"size": SMALL_CAP // 2, "pid": pid}
                assert _one_worker_pid(server) == pid
        finally:
            loop.stop()


def test_message_cap_stream_chunk_over_the_cap_is_502_before_the_stream_starts(
    held: tuple[_Behaviour, ThreadPoolExecutor],
) -> None:
    """Steps: max_message_size 1 MiB; three requests held; a stream whose first chunk is 2 MiB.
    Expect: 502 naming max_message_size (the 200 waits for the first chunk), the held requests
    answered, a stream within the cap served by the same worker pid."""
    behaviour, pool = held
    with spawn_queues() as queues:
        loop = MainLoop(*queues, behaviour).start()
        server = _server(queues, cap=SMALL_CAP)

        def answer_streams() -> None:
            for _ in range(2):
                request = behaviour.streams.get(timeout=30)
                size = int(request.text.split(":")[1])
                queues[1].put(Chunk(request.id, "x" * size, False))
                queues[1].put(Chunk(request.id, "end", True))

        streamer = threading.Thread(target=answer_streams, daemon=True)
        streamer.start()
        try:
            with running(server) as url:
                pid = _one_worker_pid(server)
                futures = _hold(url, pool, loop)
                refused = httpx.get(f"{url}/stream/{2 * MiB}", timeout=30)
                assert refused.status_code == 502, refused.text
                assert "max_message_size" in refused.json()["detail"]
                behaviour.release.set()
                _check_held_answered(futures)
                served = httpx.get(f"{url}/stream/1000", timeout=30)
                assert served.status_code == 200 and "data: 1000" in served.text and "data: 3" in served.text
                assert _one_worker_pid(server) == pid
        finally:
            streamer.join(10)
            loop.stop()


def _endpoint_of(server: Server) -> Any:
    # Private, read only: the test waits on what the main process holds for the worker instead of
    # sleeping for it.
    (worker,) = server._subprocess._supervisor.workers  # type: ignore[union-attr]
    return worker.endpoint


def test_message_cap_reply_larger_than_the_stall_bound_is_delivered_not_a_kill(
    held: tuple[_Behaviour, ThreadPoolExecutor],
) -> None:
    """Steps: stall bound 256 KiB (with_stalled_worker_limits), default cap; three requests held
    and a 32 MiB reply asked for; the worker SIGSTOPped; the 32 MiB reply released (it waits in the
    main process: the pipe is full), then the three held ones, which queue behind it; SIGCONT.
    Expect: the 32 MiB reply delivered, the held requests answered, the same worker pid (before:
    "stopped reading its replies: ... over the bound", killed with all four)."""
    behaviour, pool = held
    with spawn_queues() as queues:
        loop = MainLoop(*queues, behaviour).start()
        server = _server(queues, cap=None, max_queued=256 * 1024)
        pid = 0
        stopped = False
        try:
            with running(server) as url:
                pid = _one_worker_pid(server)
                futures = _hold(url, pool, loop)
                size = 32 * MiB
                big = pool.submit(httpx.get, f"{url}/sized/{size}?wait=1", timeout=30)
                loop.wait_received(HELD + 1)
                endpoint = _endpoint_of(server)
                os.kill(pid, signal.SIGSTOP)
                stopped = True
                behaviour.go.set()
                wait_until(lambda: endpoint.outbox.pending_bytes > 0, 30, "the big reply to wait for the worker")
                behaviour.release.set()
                # The held replies leave in one write or several: one behind the big one is the case.
                wait_until(
                    lambda: endpoint.outbox.deferred_writes >= 2 or endpoint.condemned is not None,
                    10,
                    "the held replies to queue behind it",
                )
                os.kill(pid, signal.SIGCONT)
                stopped = False
                assert endpoint.condemned is None
                answer = big.result(30)
                assert answer.status_code == 200 and answer.json() == {"size": size, "pid": pid}
                _check_held_answered(futures)
                assert _one_worker_pid(server) == pid
        finally:
            if stopped and pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
            loop.stop()
