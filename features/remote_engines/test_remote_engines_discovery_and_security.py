"""Engines found by a name (through the system's resolver, and a DNS name resolved again: a
Kubernetes headless service), CURVE encryption, and what the engine side hears when an API worker
vanishes."""

from __future__ import annotations

import os
import signal
import threading
from functools import partial
from pathlib import Path

import httpx
import pytest

pytest.importorskip("zmq", reason="this slice needs pyzmq: pip install 'isolated_api[remote]'")
pytest.importorskip("msgspec", reason="this slice needs msgspec: pip install 'isolated_api[msgspec]'")

import zmq

from isolated_api.testing import running, wait_until

from .engine_farm import (
    EngineFarm,
    api_builder,
    engine_view,
    hosts_from_file,
    post_all,
    ready_body,
    wait_ready,
)


def test_remote_engines_follow_a_name_as_engines_join_and_leave(farm: EngineFarm, tmp_path: Path) -> None:
    # Two engines on one port, at two loopback IPs: what a headless service's name resolves to.
    first = farm.start("first", bind="tcp://127.0.0.2:0")
    port = int(first.address.rsplit(":", 1)[1])
    second = farm.start("second", bind=f"tcp://127.0.0.3:{port}")
    records = tmp_path / "records"
    records.write_text("127.0.0.2\n")
    resolver = partial(hosts_from_file, str(records))
    name = f"tcp://engines.example:{port}"
    with running(api_builder(name, resolver=resolver, resolve_interval=0.2).build()) as base:
        wait_ready(base, 1)
        assert {r.json()["engine"] for r in post_all(base, "/generate", [{"prompt": "a"}] * 6)} == {"first"}
        records.write_text("127.0.0.2\n127.0.0.3\n")  # "second" joins
        wait_ready(base, 2)
        assert {r.json()["engine"] for r in post_all(base, "/generate", [{"prompt": "b"}] * 6)} == {"first", "second"}
        records.write_text("127.0.0.3\n")  # "first" leaves: no new requests, closed once idle
        wait_until(lambda: len(ready_body(base)["engines"]) == 1, 10, "'first' gone from the list")
        answers = post_all(base, "/generate", [{"prompt": "c"}] * 6)
        assert [(r.status_code, r.json()["engine"]) for r in answers] == [(200, "second")] * 6
        assert engine_view(base, second.address)["state"] == "ready"


def test_remote_engines_find_an_engine_by_name_through_the_systems_resolver(farm: EngineFarm) -> None:
    """Steps: one engine on 127.0.0.1; an API host given ``tcp://localhost:<port>`` and no resolver
    of its own, so the name goes through the system's resolver (getaddrinfo: /etc/hosts, then
    DNS). Expect the engine ready under the address the name resolved to, and every request
    answered by it."""
    engine = farm.start("named", bind="tcp://127.0.0.1:0")
    port = int(engine.address.rsplit(":", 1)[1])
    with running(api_builder(f"tcp://localhost:{port}").build()) as base:
        wait_ready(base, 1)
        answers = post_all(base, "/generate", [{"prompt": "by name"}] * 4)
        assert [(r.status_code, r.json()["engine"]) for r in answers] == [(200, "named")] * 4
        assert engine_view(base, f"tcp://127.0.0.1:{port}")["state"] == "ready"


def test_remote_engines_curve_keys_encrypt_and_keep_out_clients_without_them(farm: EngineFarm) -> None:
    public, secret = (key.decode() for key in zmq.curve_keypair())
    gpu = farm.start("gpu", curve_secret_key=secret)
    with running(api_builder(gpu.address, curve_server_key=public).build()) as base:
        wait_ready(base, 1)
        assert post_all(base, "/generate", [{"prompt": "x"}])[0].json() == {"text": "X", "engine": "gpu"}
    with running(api_builder(gpu.address).build()) as outsider:
        # No key: the handshake fails, so the engine never answers a ping and gets no request.
        refused = post_all(outsider, "/generate", [{"prompt": "y"}])[0]
        assert refused.status_code == 503 and "no engine is ready" in refused.json()["detail"]
        response = httpx.get(f"{outsider}/health/ready", timeout=5)
        assert response.status_code == 503
        [engine] = response.json()["engines"]
        assert engine["state"] == "connecting" and "CURVE keys" in engine["problem"], engine
    assert "y" not in gpu.seen_jobs()


def _post_ignoring_errors(base: str, body: dict[str, object]) -> None:
    # The worker that would answer is killed: its connection drops without a response.
    try:
        httpx.post(f"{base}/generate", json=body, timeout=30)
    except httpx.HTTPError:
        pass


def test_remote_engines_engine_hears_worker_died_for_a_vanished_api_worker(farm: EngineFarm) -> None:
    gpu = farm.start("gpu", cancel_notices=True)
    server = api_builder(gpu.address).build()
    with running(server) as base:
        wait_ready(base, 1)
        worker = server.process
        assert worker is not None and worker.pid is not None
        # A job long enough to still be running when the engine host notices the silent peer.
        sending = threading.Thread(target=_post_ignoring_errors, args=(base, {"prompt": "orphan", "delay": 4.0}))
        sending.start()
        wait_until(lambda: "orphan" in gpu.seen_jobs(), 10, "the job reached the engine")
        job_id = next(e[1] for e in gpu.seen if e[0] == "job")
        os.kill(worker.pid, signal.SIGKILL)
        # The engine host notices the silent peer (3 of its ping intervals and a second) and
        # tells the loop, which reads it once its current job is done.
        wait_until(lambda: ("cancel", job_id, "worker_died") in gpu.drain_events(), 20, "CancelRequest(worker_died)")
        sending.join(10)
