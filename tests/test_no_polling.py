"""DESIGN.md invariant 1: one blocking reader, no polling. An idle server's reply reader sleeps in
the kernel: over an idle stretch its thread uses no CPU, and the child stays near uvicorn's own
idle cost (a 10 Hz housekeeping tick)."""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx

from isolated_api.testing import running, wait_until
from tests.helpers import MainLoop, builder, upper_route

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(stat_path: str) -> int:
    with open(stat_path) as stat:
        fields = stat.read().rsplit(") ", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _idle_for(seconds: float) -> None:
    # Deliberately idle: nothing to wait for but the clock.
    threading.Event().wait(seconds)


def test_no_polling_idle_reader_thread_and_child_burn_no_cpu(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: start the child, serve one request, then stay idle for 2 s. Expect the relay's
    reader thread to gain at most 1 clock tick (10 ms) and the child under 0.2 s of CPU."""
    server = (
        builder("idle")
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    with running(server) as url:
        assert httpx.post(f"{url}/upper", json={"text": "warm"}, timeout=10).status_code == 200
        # The relay's reader thread: internal, so reached through the server's subprocess mode.
        assert server._subprocess is not None
        relay = server._subprocess.relay
        assert relay._reader is not None
        wait_until(lambda: relay._reader is not None and relay._reader.native_id is not None, 5, "reader id")
        reader_stat = f"/proc/{os.getpid()}/task/{relay._reader.native_id}/stat"
        assert server.process is not None
        child_stat = f"/proc/{server.process.pid}/stat"
        reader_before, child_before = _cpu_ticks(reader_stat), _cpu_ticks(child_stat)
        _idle_for(2.0)
        reader_used = _cpu_ticks(reader_stat) - reader_before
        child_used = (_cpu_ticks(child_stat) - child_before) / _TICKS
        assert reader_used <= 1, f"the reply reader used {reader_used} ticks while idle"
        assert child_used < 0.2, f"the idle child used {child_used:.3f} s of CPU in 2 s"
