"""An engine host admits exactly its ``max_pending``; past it the API tries another engine once,
else answers 503 with Retry-After. Never a 500."""

from __future__ import annotations

import threading

import httpx
import pytest

pytest.importorskip("zmq", reason="this slice needs pyzmq: pip install 'isolated_api[remote]'")
pytest.importorskip("msgspec", reason="this slice needs msgspec: pip install 'isolated_api[msgspec]'")

from isolated_api.testing import running, wait_until

from .engine_farm import (
    EngineFarm,
    api_builder,
    post_all,
    ready_body,
    wait_ready,
)


def _jobs(engine_events: list[tuple[object, ...]]) -> list[str]:
    return [str(event[2]) for event in engine_events if event[0] == "job"]


def test_remote_engines_full_engine_answers_503_with_retry_after(farm: EngineFarm) -> None:
    gpu = farm.start("gpu", max_pending=2)
    with running(api_builder(gpu.address).build()) as base:
        wait_ready(base, 1)
        answers = post_all(base, "/generate", [{"prompt": f"p{i}", "delay": 1.0} for i in range(6)])
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200, 200, 503, 503, 503, 503], [r.text for r in answers]
        for refused in (r for r in answers if r.status_code == 503):
            assert int(refused.headers["Retry-After"]) >= 1
        # Exactly the admitted two reached the engine's loop: the rest never ran.
        wait_until(lambda: len(_jobs(gpu.drain_events())) == 2, 10, "the engine read its two jobs")
        served = sorted(r.json()["text"] for r in answers if r.status_code == 200)
        assert served == sorted(prompt.upper() for prompt in _jobs(gpu.seen))


def test_remote_engines_refused_request_runs_once_on_another_engine(farm: EngineFarm) -> None:
    small, big = farm.start("small", max_pending=1), farm.start("big")
    # This API host pings rarely, so it keeps believing "small" is empty after the other host fills
    # it: its requests there are refused, and it must send them to "big" instead.
    slow_pings = {"ping_interval": 10.0, "ping_timeout": 30.0}
    with running(api_builder(small.address, big.address, **slow_pings).build()) as base:
        # Ready well before the first periodic ping: each engine is pinged as its connection
        # completes.
        wait_ready(base, 2, timeout=5)
        with running(api_builder(small.address).build()) as filler:
            wait_ready(filler, 1)
            # Another API host fills "small" for the next seconds with a stream.
            filling = threading.Thread(
                target=httpx.post,
                args=(f"{filler}/stream",),
                kwargs={"json": {"prompt": "f", "tokens": 20, "delay": 0.1}, "timeout": 30},
                daemon=True,
            )
            filling.start()
            wait_until(lambda: "f" in _jobs(small.drain_events()), 10, "the filler's stream runs on 'small'")
            answers = [post_all(base, "/generate", [{"prompt": f"q{i}"}])[0] for i in range(4)]
            filling.join(30)
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
        assert {r.json()["engine"] for r in answers} == {"big"}
        # Ties rotate, so some went to "small" first: refused there unrun, retried on "big".
        assert ready_body(base)["retried"] >= 1
        assert not any(prompt.startswith("q") for prompt in _jobs(small.drain_events()))
