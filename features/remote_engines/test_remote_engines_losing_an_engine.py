"""A lost engine ends exactly the requests that were on it, once; the others carry on, and new
requests go to the engines still there."""

from __future__ import annotations

import json
import os
import signal
import threading
from typing import Any

import httpx
import pytest

pytest.importorskip("zmq", reason="this slice needs pyzmq: pip install 'isolated_api[remote]'")
pytest.importorskip("msgspec", reason="this slice needs msgspec: pip install 'isolated_api[msgspec]'")

from isolated_api.testing import running, wait_until

from .engine_farm import (
    EngineFarm,
    EngineProcess,
    api_builder,
    engine_view,
    post_all,
    wait_ready,
)


class _StreamReader(threading.Thread):
    """Reads one SSE stream, reporting its status and each event as they come."""

    def __init__(self, base: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.base, self.body = base, body
        self.status: int | None = None
        self.tokens: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.stream("POST", f"{self.base}/stream", json=self.body, timeout=30) as response:
            self.status = response.status_code
            if response.status_code != 200:
                response.read()
                return
            event = "message"
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    if event == "error":
                        self.errors.append(line[6:])
                    else:
                        self.tokens.append(json.loads(line[6:]))
                    event = "message"


def test_remote_engines_sigkilled_engine_ends_only_its_own_requests(farm: EngineFarm) -> None:
    doomed, survivor = farm.start("doomed"), farm.start("survivor")
    with running(api_builder(doomed.address, survivor.address).build()) as base:
        wait_ready(base, 2)
        # Two streams per engine: each engine runs one and holds the other waiting (one job at a
        # time, like a GPU), so the doomed one has a stream answering and one before its 200.
        readers = [_StreamReader(base, {"prompt": f"s{i}", "tokens": 30, "delay": 0.1}) for i in range(4)]
        for reader in readers:
            reader.start()

        def answering_on(name: str) -> list[_StreamReader]:
            return [r for r in list(readers) if r.tokens and r.tokens[0]["engine"] == name]

        wait_until(lambda: bool(answering_on("doomed") and answering_on("survivor")), 20, "a stream on each")
        doomed.kill()
        for reader in readers:
            reader.join(30)
        on_doomed, on_survivor = answering_on("doomed"), answering_on("survivor")
        refused = [r for r in readers if r.status != 200]
        # Answering on the doomed engine: its 200 stands; the stream ends with one error event.
        assert len(on_doomed) == 1 and len(on_doomed[0].errors) == 1, [(r.status, r.errors) for r in readers]
        assert "lost" in on_doomed[0].errors[0]
        assert len(on_doomed[0].tokens) < 30
        # Waiting on the doomed engine (no chunk yet): a 503.
        assert [r.status for r in refused] == [503]
        # The survivor's two streams finish untouched, in order.
        assert len(on_survivor) == 2
        for reader in on_survivor:
            assert [t["index"] for t in reader.tokens] == list(range(30)) and not reader.errors
        # New requests go to the live engine at once.
        answers = post_all(base, "/generate", [{"prompt": f"n{i}"} for i in range(10)])
        assert [(r.status_code, r.json()["engine"]) for r in answers] == [(200, "survivor")] * 10
        assert engine_view(base, doomed.address)["state"] == "lost"


def _two_slow_requests_one_engine_killed(base: str, doomed: EngineProcess, delay: float) -> list[httpx.Response]:
    """Two slow requests at once (ties rotate: one per engine); the doomed engine is SIGKILLed
    while its one runs. Returns both answers."""
    results: list[httpx.Response] = []
    bodies = [{"prompt": f"u{i}", "delay": delay} for i in range(2)]
    slow = threading.Thread(target=lambda: results.extend(post_all(base, "/generate", bodies)))
    slow.start()
    wait_until(lambda: any(e[0] == "job" for e in doomed.drain_events()), 20, "a job reached the doomed engine")
    doomed.kill()
    slow.join(30)
    return results


def test_remote_engines_lost_unary_request_is_503_and_runs_nowhere_else(farm: EngineFarm) -> None:
    doomed, survivor = farm.start("doomed"), farm.start("survivor")
    with running(api_builder(doomed.address, survivor.address).build()) as base:
        wait_ready(base, 2)
        results = _two_slow_requests_one_engine_killed(base, doomed, delay=1.5)
        assert sorted(r.status_code for r in results) == [200, 503], [r.text for r in results]
        # Not re-executed on the survivor: it ran only its own one.
        wait_until(lambda: len(survivor.seen_jobs()) == 1, 10, "the survivor's job")
        assert len(survivor.seen_jobs()) == 1


def test_remote_engines_opt_in_retry_runs_a_lost_unary_request_elsewhere(farm: EngineFarm) -> None:
    doomed, survivor = farm.start("doomed"), farm.start("survivor")
    with running(api_builder(doomed.address, survivor.address, retry_lost=True).build()) as base:
        wait_ready(base, 2)
        results = _two_slow_requests_one_engine_killed(base, doomed, delay=1.0)
        assert [(r.status_code, r.json()["engine"]) for r in results] == [(200, "survivor")] * 2


def test_remote_engines_host_gone_silent_is_lost_by_zmtp_heartbeats(farm: EngineFarm) -> None:
    # A host that vanished without closing its TCP connection (power loss, a cut cable): here the
    # engine's whole process is stopped, libzmq's own thread included. Application pings are set
    # to wait 60 s, so what finds it is the ZMTP heartbeat (1.5 s).
    silent, other = farm.start("silent"), farm.start("other")
    options = {"ping_interval": 5.0, "ping_timeout": 60.0, "heartbeat_interval": 0.3, "heartbeat_timeout": 1.5}
    with running(api_builder(silent.address, other.address, **options).build()) as base:
        wait_ready(base, 2)
        os.kill(silent.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: engine_view(base, silent.address)["state"] == "lost", 20, "the silent host lost")
            answers = post_all(base, "/generate", [{"prompt": f"n{i}"} for i in range(6)])
            assert [(r.status_code, r.json()["engine"]) for r in answers] == [(200, "other")] * 6
        finally:
            os.kill(silent.pid, signal.SIGCONT)
