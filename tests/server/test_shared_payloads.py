"""Shared payloads (issue 28 item 3): buffers of at least ``min_size`` bytes cross in a memfd arena
per worker incarnation. Slots are reused (10,000 requests in a 4 MiB arena), a killed worker's
arena is unmapped once the requests it left queued are read, a full arena falls back to the
pipes and still answers, a forged handle condemns only the worker that sent it, and a SIGKILLed
main process leaves nothing behind: no segment in ``/dev/shm``, no process, no port."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request

from isolated_api import IPC, ConfigError, ServerBuilder
from isolated_api.main.shared_requests import arenas, open_arenas, shared_counts
from isolated_api.shared.arena import SLOTS
from isolated_api.testing import MainLoop, loopback_builder, pid_alive, running, spawn_queues, wait_until

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
MIN_SIZE = 64 * 1024
ARENA = 4 * MiB


@dataclass
class Blob:
    id: str
    data: bytes


def _id() -> str:
    return os.urandom(8).hex()


async def echo_route(request: Request, channel: IPC) -> dict[str, Any]:
    """The body goes to the main process as bytes and comes back reversed."""
    reply = await channel.submit(Blob(_id(), await request.body()))
    return {"size": len(reply.data), "sha256": hashlib.sha256(reply.data).hexdigest(), "pid": os.getpid()}


async def burst_route(count: int, size: int, channel: IPC) -> dict[str, int]:
    """``count`` requests of ``size`` bytes one after another, each checked against its reply."""
    good = 0
    for index in range(count):
        data = index.to_bytes(4, "big") * (size // 4)
        reply = await channel.submit(Blob(_id(), data))
        good += reply.data == data[::-1]
    return {"good": good}


async def pid_route() -> dict[str, int]:
    return {"pid": os.getpid()}


async def forge_route(request: Request, channel: IPC) -> dict[str, Any]:
    """Plays a compromised worker: its next shared request names bytes past the request region."""
    from isolated_api.shared import shared_payload

    honest = shared_payload.Encoded.__init__

    def forged(self: Any, segments: list[Any], parts: list[Any], inline: int) -> None:
        honest(self, [(at, slot, offset + (1 << 30), length) for at, slot, offset, length in segments], parts, inline)

    shared_payload.Encoded.__init__ = forged  # type: ignore[method-assign]
    reply = await channel.submit(Blob(_id(), await request.body()))
    return {"size": len(reply.data)}


def reverse(request: Any) -> Any:
    return Blob(request.id, request.data[::-1])


class GatedLoop(MainLoop):
    """A main loop that reads ``request_q`` only while ``reading`` is set (clear at first: a read
    already waiting in ``get`` when it is cleared would still take one request)."""

    def __init__(self, request_q: Any, response_q: Any) -> None:
        super().__init__(request_q, response_q, reverse)
        self.reading = threading.Event()
        self._queue = request_q
        self.request_q = self

    def get(self) -> Any:
        self.reading.wait()
        return self._queue.get()

    def put(self, obj: Any) -> None:
        self._queue.put(obj)


def _builder(queues: tuple[Any, Any], name: str, **shared: int) -> Any:
    return (
        loopback_builder(name, 30)
        .routes.with_route("/echo", echo_route, methods=["POST"])
        .with_route("/burst", burst_route)
        .with_route("/pid", pid_route)
        .with_route("/forge", forge_route, methods=["POST"])
        .done()
        .uvicorn.with_max_body_size(8 * MiB)
        .done()
        .subprocess.with_ipc(*queues)
        .with_shared_payloads(**shared)
    )


def _memfd_maps() -> int:
    with open(f"/proc/{os.getpid()}/maps") as maps:
        return sum("memfd:isolated-api-arena" in line for line in maps)


def test_shared_payloads_settings_are_checked() -> None:
    """A 4 MiB arena is accepted; a min_size under 64 KiB, an arena that can't hold one payload
    each way, or a non-integer is a ConfigError naming the setting."""
    ServerBuilder("s").subprocess.with_shared_payloads(min_size=64 * 1024, arena_size=4 * MiB)
    for bad, named in (
        ({"min_size": 1024}, "min_size"),
        ({"arena_size": 128 * 1024}, "arena_size"),
        ({"arena_size": True}, "arena_size"),
        ({"min_size": 1.5}, "min_size"),
    ):
        with pytest.raises(ConfigError, match=named):
            ServerBuilder("s").subprocess.with_shared_payloads(**bad)


def test_shared_payloads_slots_are_reused_over_10000_requests() -> None:
    """Steps: a 4 MiB arena (about 30 payloads of 64 KiB each way); 10,000 requests of 64 KiB + 4
    bytes, each answered with its bytes reversed. Expect every reply right, all 10,000 requests
    and replies in the arena (so its slots were reused), none still busy, one arena mapped."""
    with spawn_queues() as queues:
        loop = MainLoop(*queues, reverse).start()
        server = _builder(queues, "shared-reuse", min_size=MIN_SIZE, arena_size=ARENA).done().build()
        try:
            before = shared_counts()
            with running(server) as url, httpx.Client(timeout=60) as client:
                for _ in range(4):
                    answer = client.get(f"{url}/burst", params={"count": 2500, "size": MIN_SIZE + 4})
                    assert answer.json() == {"good": 2500}
                counts = shared_counts()
                assert counts["requests"] - before["requests"] == 10_000
                assert counts["replies"] - before["replies"] == 10_000
                (owner,) = arenas()
                assert owner.replies.live_count == 0
                assert _memfd_maps() == 1
        finally:
            loop.stop()


def test_shared_payloads_a_killed_workers_arena_is_unmapped_once_its_requests_are_read() -> None:
    """Steps: the main loop stops reading; three 200 KiB uploads reach request_q with their bytes
    in the arena; SIGKILL the worker. Expect the replacement to serve 1 MiB intact through its own
    arena while the old one stays mapped (three requests still point into it), and the old one
    unmapped once the main loop reads them (their bytes intact)."""
    with spawn_queues() as queues:
        loop = GatedLoop(*queues).start()
        server = _builder(queues, "shared-kill", min_size=MIN_SIZE, arena_size=ARENA).with_auto_restart().done().build()
        try:
            with running(server) as url, ThreadPoolExecutor(3) as pool:
                before = shared_counts()["requests"]
                bodies = [os.urandom(200 * 1024) for _ in range(3)]
                held = [pool.submit(_post, f"{url}/echo", body) for body in bodies]
                wait_until(lambda: shared_counts()["requests"] - before == 3, 20, "three requests in the arena")
                old = httpx.get(f"{url}/pid", timeout=10).json()["pid"]
                os.kill(old, signal.SIGKILL)
                for future in held:
                    ended = future.result(30)
                    assert ended is None or ended.status_code != 200
                wait_until(lambda: _serves_other_than(url, old), 20, "a replacement worker")
                assert open_arenas() == 2
                loop.reading.set()
                wait_until(lambda: open_arenas() == 1, 20, "the dead worker's arena to be unmapped")
                assert _memfd_maps() == 1
                assert sorted(request.data for request in loop.received[-3:]) == sorted(bodies)
                body = os.urandom(MiB)
                answer = httpx.post(f"{url}/echo", content=body, timeout=30).json()
                assert answer["sha256"] == hashlib.sha256(body[::-1]).hexdigest()
        finally:
            loop.reading.set()
            loop.stop()


def test_shared_payloads_a_full_arena_falls_back_to_the_pipes_and_answers() -> None:
    """Steps: a 4 MiB arena (about 2 MiB for requests); the main loop stops reading; a 1.5 MiB
    upload, which waits in the arena; then another, which can't fit beside it; the main loop reads
    again; then one of 3 MiB (larger than the region). Expect only the first in the arena, and all
    three answered intact."""
    with spawn_queues() as queues:
        loop = GatedLoop(*queues).start()
        server = _builder(queues, "shared-full", min_size=MIN_SIZE, arena_size=ARENA).done().build()
        try:
            with running(server) as url, ThreadPoolExecutor(2) as pool:
                (owner,) = arenas()
                before = shared_counts()["requests"]
                bodies = [os.urandom(3 * MiB // 2) for _ in range(2)] + [os.urandom(3 * MiB)]
                answers = [pool.submit(_post, f"{url}/echo", bodies[0])]
                wait_until(lambda: sum(owner.arena.states()[:SLOTS]) == 1, 20, "the first upload in the arena")
                answers.append(pool.submit(_post, f"{url}/echo", bodies[1]))
                wait_until(lambda: server.ipc is not None and server.ipc.route_count == 2, 20, "the second upload")
                loop.reading.set()
                answers.append(pool.submit(_post, f"{url}/echo", bodies[2]))
                for body, future in zip(bodies, answers, strict=True):
                    answer = future.result(30)
                    assert answer is not None and answer.status_code == 200, answer
                    assert answer.json()["sha256"] == hashlib.sha256(body[::-1]).hexdigest()
                assert shared_counts()["requests"] - before == 1
        finally:
            loop.reading.set()
            loop.stop()


def test_shared_payloads_a_forged_handle_condemns_only_its_worker() -> None:
    """Steps: two workers; a request held in worker B; worker A sends a request whose handle
    points past its request region. Expect the forged request never to reach the main loop, A
    killed and replaced, B alive and its held request answered."""
    release = threading.Event()

    def behaviour(request: Any) -> Any:
        if request.data[:4] == b"hold":
            release.wait(30)
        return reverse(request)

    with spawn_queues() as queues:
        loop = MainLoop(*queues, behaviour).start()
        server = (
            _builder(queues, "shared-forge", min_size=MIN_SIZE, arena_size=ARENA)
            .with_auto_restart()
            .done()
            .uvicorn.with_workers(2)
            .done()
            .build()
        )
        try:
            with running(server) as url:
                clients = _clients_per_worker(url)
                (a, client_a), (b, client_b) = clients.items()
                with ThreadPoolExecutor(1) as pool:
                    held_body = b"hold" + os.urandom(MiB)
                    held = pool.submit(client_b.post, f"{url}/echo", content=held_body)
                    wait_until(lambda: any(r.data[:4] == b"hold" for r in loop.received), 20, "the held request")
                    received = len(loop.received)
                    forged = _post_with(client_a, f"{url}/forge", os.urandom(MiB))
                    assert forged is None or forged.status_code >= 500
                    wait_until(lambda: not pid_alive(a), 10, "the forging worker to be killed")
                    release.set()
                    answer = held.result(30)
                    assert answer.status_code == 200 and answer.json()["pid"] == b
                    assert answer.json()["sha256"] == hashlib.sha256(held_body[::-1]).hexdigest()
                assert len(loop.received) == received  # the forged request never reached it
                assert pid_alive(b)
                wait_until(lambda: _serves_other_than(url, a), 20, "a replacement for the forging worker")
                for client in clients.values():
                    client.close()
        finally:
            release.set()
            loop.stop()


_MAIN_SCRIPT = textwrap.dedent(
    """
    import json, multiprocessing, sys, threading
    from isolated_api import ServerBuilder
    from tests.server.test_shared_payloads import Blob, echo_route

    def hold(request_q, response_q):
        while True:
            request = request_q.get()
            if request.data[:4] != b"hold":
                response_q.put(Blob(request.id, request.data[::-1]))

    if __name__ == "__main__":
        request_q, response_q = multiprocessing.Queue(), multiprocessing.Queue()
        threading.Thread(target=hold, args=(request_q, response_q), daemon=True).start()
        server = (ServerBuilder("orphan").with_host("127.0.0.1").with_port(0).with_timeout(30)
                  .routes.with_route("/echo", echo_route, methods=["POST"]).done()
                  .uvicorn.with_max_body_size(8 << 20).done()
                  .subprocess.with_ipc(request_q, response_q).with_start_method(sys.argv[1])
                  .with_shared_payloads(arena_size=4 << 20).done().build())
        process = server.start_subprocess()
        print(json.dumps({"child": process.pid, "port": server.port}), flush=True)
        threading.Event().wait()
    """
)


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_shared_payloads_sigkill_of_the_main_process_leaves_nothing(tmp_path: Path, start_method: str) -> None:
    """Steps: a separate main process with shared payloads answers a 1 MiB upload through the
    arena and holds another; SIGKILL it. Expect neither process to map anything from /dev/shm but
    the queues' semaphores (the arena is a memfd, mapped by both), no new segment there before or after (semaphores of
    multiprocessing's queues aside: this machine's other test runs make those too), the worker
    gone and the port refusing connections."""
    shm_before = _shm_segments()
    script = tmp_path / "main.py"
    script.write_text(_MAIN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    main = subprocess.Popen(
        [sys.executable, str(script), start_method], stdout=subprocess.PIPE, cwd=REPO, env=env, text=True
    )
    try:
        assert main.stdout is not None
        info = json.loads(main.stdout.readline())
        child, port = info["child"], info["port"]
        url = f"http://127.0.0.1:{port}"
        body = os.urandom(MiB)
        answer = httpx.post(f"{url}/echo", content=body, timeout=30).json()
        assert answer["sha256"] == hashlib.sha256(body[::-1]).hexdigest()
        for pid in (main.pid, child):
            with open(f"/proc/{pid}/maps") as maps:
                mapped = maps.read()
            assert "memfd:isolated-api-arena" in mapped
            # Only the queues' semaphores (glibc maps them from /dev/shm/sem.*, already unlinked).
            assert not [line for line in mapped.splitlines() if "/dev/shm/" in line and "/dev/shm/sem." not in line]
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(_post, f"{url}/echo", b"hold" + os.urandom(MiB))
            assert _shm_segments() <= shm_before
            main.kill()
            main.wait(10)
            held.result(30)
        wait_until(lambda: not pid_alive(child), 5, "the orphaned worker to exit")
        wait_until(lambda: _port_refuses(port), 5, "the port to be freed")
        assert _shm_segments() <= shm_before
    finally:
        if main.poll() is None:
            main.kill()
        main.wait(10)
        if main.stdout is not None:
            main.stdout.close()


def _shm_segments() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.mp-")}


def _post(url: str, body: bytes) -> httpx.Response | None:
    try:
        return httpx.post(url, content=body, timeout=30)
    except httpx.HTTPError:
        return None


def _post_with(client: httpx.Client, url: str, body: bytes) -> httpx.Response | None:
    try:
        return client.post(url, content=body)
    except httpx.HTTPError:
        return None


def _serves_other_than(url: str, pid: int) -> bool:
    try:
        return bool(httpx.get(f"{url}/pid", timeout=2).json()["pid"] != pid)
    except httpx.HTTPError:
        return False


def _clients_per_worker(url: str) -> dict[int, httpx.Client]:
    """One keep-alive client connected to each of the two workers."""
    found: dict[int, httpx.Client] = {}
    deadline = time.monotonic() + 30
    while len(found) < 2:
        assert time.monotonic() < deadline, "two workers never both answered"
        client = httpx.Client(timeout=30)
        pid = client.get(f"{url}/pid").json()["pid"]
        if pid in found:
            client.close()
        else:
            found[pid] = client
    return found


def _port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True
