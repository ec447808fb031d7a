"""stop(): once the workers are told to drain, the main process lets go of the listening socket,
so the port closes with the last worker's copy and later clients are refused (not left in the
backlog to be reset: behind a load balancer a reset POST may or may not have run)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import httpx

from isolated_api import IPC, new_request_id
from isolated_api.testing import MainLoop, loopback_builder, spawn_queues, wait_until


@dataclass
class Hold:
    id: str


@dataclass
class Held:
    id: str


async def hold_route(channel: IPC) -> dict[str, str]:
    await channel.submit(Hold(new_request_id()))
    return {"status": "answered"}


def _listening_inode(port: int) -> str | None:
    """The inode of the socket listening on 127.0.0.1:``port``, from /proc/net/tcp."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                return fields[9]
    return None


def _this_process_holds(inode: str) -> bool:
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == f"socket:[{inode}]":
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def test_stop_lets_go_of_the_port_while_the_workers_drain() -> None:
    release = threading.Event()

    def answer_when_released(request: Any) -> Held:
        release.wait(30)
        return Held(request.id)

    with spawn_queues() as (request_q, response_q):
        loop = MainLoop(request_q, response_q, answer_when_released).start()
        server = (
            loopback_builder("port-release", timeout=30)
            .routes.with_route("/hold", hold_route)
            .done()
            .subprocess.with_ipc(request_q, response_q)
            .done()
            .build()
        )
        server.start_subprocess()
        port = server.port
        assert port is not None and port > 0, "a started server reports the port it bound"
        answers: list[httpx.Response] = []
        stopping: threading.Thread | None = None
        try:
            inode = _listening_inode(port)
            assert inode is not None and _this_process_holds(inode)
            client = threading.Thread(
                target=lambda: answers.append(httpx.get(f"http://127.0.0.1:{port}/hold", timeout=30))
            )
            client.start()
            loop.wait_received(1)
            stopping = threading.Thread(target=server.stop, kwargs={"timeout": 20.0})
            stopping.start()
            # The held request keeps its worker draining; this process has let go already.
            wait_until(lambda: not _this_process_holds(inode), 10, "the main process to close its listener")
            assert stopping.is_alive() and _listening_inode(port) == inode  # the worker's copy serves on
            release.set()
            client.join(30)
            stopping.join(30)
            assert [r.status_code for r in answers] == [200]
            # The port closed with the worker's copy: a new client is refused outright.
            assert _listening_inode(port) is None
        finally:
            release.set()
            if stopping is None:
                server.stop(timeout=5)
            loop.stop()
