"""Fault matrix, issue 16 item 6: a compromised HTTP worker against the main process.

| a worker sends                                | before                            | after                          |
|-----------------------------------------------|-----------------------------------|--------------------------------|
| a probe frame holding a pickle that runs code | the relay unpickles it: code runs | refused unread; worker killed  |
| a frame header claiming 4 GiB, then bytes     | main buffers toward 4 GiB         | refused at header; killed      |
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

import httpx
import pytest
from fastapi import Request

from isolated_api.shared.framing import Kind, frame
from isolated_api.testing import running, wait_until
from tests.helpers import MainLoop, builder, ping_route, upper_route


class Touch:
    """Unpickling this creates a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


async def evil_route(request: Request, attack: str, marker: str = "") -> dict[str, int]:
    """Plays a compromised worker: writes a raw frame on its own uplink to the main process."""
    link = request.app.state.ipc_channel._link
    data = (
        frame(Kind.PROBE, pickle.dumps(Touch(marker)))
        if attack == "pickle"
        else struct.pack("!IB", 0xFFFFFFFF, Kind.REQUEST) + b"x" * (1 << 20)
    )
    link._writer.write(data)
    return {"pid": os.getpid()}


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.parametrize("attack", ["pickle", "huge"])
def test_trust_boundary_worker_breaking_the_protocol_is_killed_and_runs_nothing_here(
    queues: tuple[Any, Any], tmp_path: Any, attack: str
) -> None:
    """Steps: a route writes the attack on its worker's uplink. Expect: no file created by the
    pickle, the main process's memory not grown by the claimed size, that worker killed and
    replaced, and the next request served."""
    marker = tmp_path / "pwned"
    loop = MainLoop(*queues).start()
    server = (
        builder("trust")
        .routes.with_route("/evil", evil_route)
        .with_route("/upper", upper_route, methods=["POST"])
        .with_route("/ping", ping_route)
        .done()
        .subprocess.with_ipc(*queues)
        .with_auto_restart(backoff=0.0)
        .done()
        .build()
    )
    try:
        with running(server) as url:
            first = server.processes[0].pid
            rss = _rss_kib()
            try:
                httpx.get(f"{url}/evil", params={"attack": attack, "marker": str(marker)}, timeout=10)
            except httpx.HTTPError:
                pass  # the worker may die before it answers
            wait_until(
                lambda: [p.pid for p in server.processes if p.is_alive()] not in ([], [first]), 20, "a new worker"
            )
            wait_until(lambda: _ping(url), 20, "the replacement to serve")
            assert httpx.post(f"{url}/upper", json={"text": "ok"}, timeout=10).json()["text"] == "OK"
            assert not marker.exists()
            assert _rss_kib() - rss < 256 * 1024  # far below the 4 GiB the header claimed
    finally:
        loop.stop()


def _ping(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ping", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
