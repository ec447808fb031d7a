"""The main process's side of a worker's pipes does not trust the worker: a frame out of bounds
or out of schema condemns it (logged once, killed by the pid it reported, cleaned up like a dead
worker) and runs nothing it sent. Also the relay's proof-of-life facts and its log of what a dead
worker had in flight. Real pipes, real queues, a real process to kill."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from isolated_api.main.pipe_endpoint import PipeEndpoint
from isolated_api.main.relay import Relay
from isolated_api.shared import control
from isolated_api.shared.codecs import PickleCodec
from isolated_api.shared.framing import Kind, dumps, frame, request_frame
from isolated_api.shared.heartbeat import Heartbeat
from isolated_api.testing import wait_until


@dataclass
class Msg:
    id: Any
    body: str = ""


class _Touch:
    """Unpickling this creates a file: what a compromised worker would send to run code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


class Collector:
    def __init__(self, name: str) -> None:
        self.name = name
        self.replies: list[Any] = []

    def deliver(self, replies: list[Any], raws: list[bytes | None]) -> None:
        self.replies.extend(replies)


@pytest.fixture
def relay(relay: Relay, queues: tuple[Any, Any]) -> tuple[Relay, Any, Any]:
    """The running relay of tests/main/conftest.py, with its request and response queues."""
    return relay, *queues


def _endpoint(relay: Relay, lost: list[list[Hashable]], pid: int) -> tuple[PipeEndpoint, int, Any]:
    up_r, up_w = multiprocessing.Pipe(duplex=False)
    down_r, down_w = multiprocessing.Pipe(duplex=False)
    endpoint = PipeEndpoint(
        relay,
        up_r,
        down_w,
        name="worker",
        on_ready=lambda e, i: None,
        on_lost=lambda e, ids, torn: lost.append(ids),
        pid_of=lambda: pid,
    )
    endpoint.start()
    return endpoint, up_w.fileno(), (up_w, down_r)


@pytest.mark.parametrize("attack", ["pickled probe", "4 GiB header", "reply kind"])
def test_endpoint_condemns_a_worker_that_breaks_the_protocol(
    relay: tuple[Relay, Any, Any], tmp_path: Path, attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Steps: a 'worker' (a real sleeping process) reports ready, naming another process's pid as
    its own, and has one request in flight, then sends an attack frame. Expect: nothing it sent
    ran (no marker file), the worker process (the pid this process started) killed and the one it
    named untouched, its request detached once, one error logged, the relay still serving."""
    relay_, rq, sq = relay
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lost: list[list[Hashable]] = []
    endpoint, fd, keep = _endpoint(relay_, lost, victim.pid)
    marker = tmp_path / "ran"
    try:
        os.write(fd, frame(Kind.READY, control.encode_ready(bystander.pid, 1)))
        os.write(fd, request_frame(Kind.REQUEST, "r1", b"POST /x", dumps(Msg("r1")), PickleCodec().encode_id))
        assert rq.get(timeout=5) == Msg("r1")
        attacks = {
            "pickled probe": frame(Kind.PROBE, pickle.dumps(_Touch(str(marker)))),
            "4 GiB header": struct.pack("!IB", 0xFFFFFFFF, Kind.REQUEST) + b"x" * 1000,
            "reply kind": frame(Kind.REPLY, b"whatever"),
        }
        with caplog.at_level(logging.ERROR, "isolated_api.relay"):
            os.write(fd, attacks[attack])
            assert victim.wait(10) == -9
            endpoint.join(10)
        assert lost == [["r1"]]
        assert bystander.poll() is None, "the pid the worker named was signalled"
        assert not marker.exists()
        assert [r.message for r in caplog.records if "treated as dead" in r.message] != []
        other = Collector("other")
        relay_.forward(other, "next", request=Msg("next"))
        sq.put(Msg("next", "fine"))
        wait_until(lambda: len(other.replies) == 1, 10, "the relay to keep serving")
    finally:
        for process in (victim, bystander):
            process.kill()
            process.wait()
        for conn in keep:
            conn.close()


def test_relay_stays_unanswering_after_a_timeout_until_a_reply_or_a_beat(relay: tuple[Relay, Any, Any]) -> None:
    """Steps: a request nobody answers times out (abandoned 'timeout'); then a Heartbeat; then a
    second timeout and a late reply. Expect: unanswered_age grows with nothing pending; the beat
    clears it and is not counted as a dropped reply; so does the reply (dropped: its route is gone)."""
    relay_, rq, sq = relay
    who = Collector("w")
    relay_.forward(who, "a", request=Msg("a"))
    rq.get(timeout=5)
    assert relay_.abandon(who, "a", "timeout")
    facts = relay_.facts()
    assert facts["pending"] == 0 and facts["unanswered_age"] > 0
    sq.put(Heartbeat())
    wait_until(lambda: relay_.facts()["unanswered_age"] == 0.0, 10, "the beat to clear it")
    assert relay_.beats == 1 and relay_.dropped_count == 0
    relay_.forward(who, "b", request=Msg("b"))
    relay_.abandon(who, "b", "timeout")
    assert relay_.facts()["unanswered_age"] > 0
    relay_.forward(who, "c", request=Msg("c"))
    relay_.abandon(who, "c", "disconnected")  # a client leaving proves nothing either way
    sq.put(Msg("b", "late"))
    wait_until(lambda: relay_.facts()["unanswered_age"] == 0.0, 10, "the reply to clear it")


def test_relay_logs_the_method_and_path_of_requests_a_dead_worker_had_in_flight(
    relay: tuple[Relay, Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    relay_, _, _ = relay
    who = Collector("http-worker-0.1")
    relay_.forward(who, "r1", request=Msg("r1"), origin="POST /upper")
    relay_.forward(who, "r2", request=Msg("r2"))
    with caplog.at_level(logging.WARNING, "isolated_api.relay"):
        assert relay_.detach(who, "worker_died") == ["r1", "r2"]
    [line] = [r.getMessage() for r in caplog.records if "in flight" in r.getMessage()]
    assert "2 request(s)" in line and "'r1' (POST /upper)" in line and "'r2' (origin unknown)" in line
