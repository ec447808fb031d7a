"""Engines whose main loop is written as on one machine (read request_q, answer what it knows,
skip the rest), each in a process of its own, get traffic: readiness follows what the loop does
with requests (it reads them), so a loop busy with a long generation stays ready, and one that
reads nothing is not."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

pytest.importorskip("zmq", reason="this slice needs pyzmq: pip install 'isolated_api[remote]'")
pytest.importorskip("msgspec", reason="this slice needs msgspec: pip install 'isolated_api[msgspec]'")

from isolated_api.testing import running, wait_until

from .engine_farm import api_builder, engine_view, post_all, ready_body, wait_ready
from .plain_loop import PlainEngine, start_plain_engine

# api_builder's ping timeout: how long an engine's loop may leave a request unread. The holds
# below last twice that.
PING_TIMEOUT = 1.5


@pytest.fixture
def engines() -> Iterator[list[PlainEngine]]:
    started: list[PlainEngine] = []
    try:
        yield started
    finally:
        for engine in started:
            engine.kill()


def _start(engines: list[PlainEngine], name: str, **options: Any) -> PlainEngine:
    engine = start_plain_engine(name, **options)
    engines.append(engine)
    return engine


def _stays_ready(base: str, addresses: list[str], seconds: float = 2 * PING_TIMEOUT) -> None:
    """Asks /health/ready until ``seconds`` have passed: every answer ready, with every engine of
    ``addresses`` ready."""
    until = time.monotonic() + seconds

    def ready_and_done() -> bool:
        body = ready_body(base)
        states = {engine["address"]: engine["state"] for engine in body["engines"]}
        assert body["status"] == "ready" and all(states[a] == "ready" for a in addresses), body
        return time.monotonic() > until

    wait_until(ready_and_done, seconds + 20, f"{seconds} s of readiness")


def _tokens(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_remote_engines_plain_loop_serves_long_requests_and_streams_and_stays_ready(
    engines: list[PlainEngine],
) -> None:
    """Steps: one engine; a quick request and a quick stream; then a request its loop holds for
    twice the ping timeout, then a stream held as long before its first token. Expect every answer
    200 and in order, and /health/ready 200 with the engine ready all through each hold (its loop
    is busy, not stuck)."""
    engine = _start(engines, "plain")
    with running(api_builder(engine.address).build()) as base, ThreadPoolExecutor(1) as pool:
        wait_ready(base, 1)
        quick = post_all(base, "/generate", [{"prompt": "hi"}])[0]
        assert (quick.status_code, quick.json()) == (200, {"text": "HI", "engine": "plain"})
        stream = post_all(base, "/stream", [{"prompt": "s", "tokens": 3}])[0]
        assert [t["index"] for t in _tokens(stream.text)] == [0, 1, 2]
        assert [engine.read(), engine.read()] == ["hi", "s"]

        held = pool.submit(post_all, base, "/generate", [{"prompt": "held"}])
        assert engine.read() == "held"
        _stays_ready(base, [engine.address])
        engine.release()
        answer = held.result(30)[0]
        assert (answer.status_code, answer.json()["text"]) == (200, "HELD")

        held = pool.submit(post_all, base, "/stream", [{"prompt": "held-s", "tokens": 3}])
        assert engine.read() == "held-s"
        _stays_ready(base, [engine.address])
        engine.release()
        answer = held.result(30)[0]
        assert answer.status_code == 200
        assert [(t["index"], t["is_final"]) for t in _tokens(answer.text)] == [(0, False), (1, False), (2, True)]


def test_remote_engines_plain_loops_share_load_through_long_requests(engines: list[PlainEngine]) -> None:
    """Steps: two engines; one held request on each (the least loaded gets the next), held past
    twice the ping timeout; then six quick requests while both still hold; then both released.
    Expect both engines ready during the holds, the quick requests taken (not 503: no engine is
    judged stuck) and answered by both engines once the holds end."""
    a, b = _start(engines, "a"), _start(engines, "b")
    with running(api_builder(a.address, b.address).build()) as base, ThreadPoolExecutor(2) as pool:
        wait_ready(base, 2)
        held = pool.submit(post_all, base, "/generate", [{"prompt": "held-1"}, {"prompt": "held-2"}])
        assert {a.read(), b.read()} == {"held-1", "held-2"}
        _stays_ready(base, [a.address, b.address])
        quick = pool.submit(post_all, base, "/generate", [{"prompt": f"q{i}"} for i in range(6)])

        def on_the_engines() -> int:
            return sum(int(engine_view(base, e.address)["in_flight"]) for e in (a, b))

        wait_until(lambda: on_the_engines() == 8, 20, "every request sent to an engine")
        a.release()
        b.release()
        answers = held.result(30) + quick.result(30)
        assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
        assert {r.json()["engine"] for r in answers[2:]} == {"a", "b"}


def test_remote_engines_plain_loop_restarted_at_its_address_serves_long_requests_again(
    engines: list[PlainEngine],
) -> None:
    """Steps: the engine is killed while its loop holds a request; another process with the same
    loop starts at its address; a request it holds for twice the ping timeout, then releases.
    Expect the request on the killed engine ended 503; the restarted engine ready again and through
    its hold; the answer 200 from it."""
    first = _start(engines, "first")
    with running(api_builder(first.address).build()) as base, ThreadPoolExecutor(1) as pool:
        wait_ready(base, 1)
        lost = pool.submit(post_all, base, "/generate", [{"prompt": "held-old"}])
        assert first.read() == "held-old"
        first.kill()
        assert lost.result(30)[0].status_code == 503
        again = _start(engines, "again", bind=first.address)
        wait_ready(base, 1)
        held = pool.submit(post_all, base, "/generate", [{"prompt": "held-new"}])
        assert again.read() == "held-new"
        _stays_ready(base, [first.address])
        again.release()
        answer = held.result(30)[0]
        assert (answer.status_code, answer.json()["engine"]) == (200, "again")


def test_remote_engines_plain_loop_that_reads_nothing_is_not_ready(engines: list[PlainEngine]) -> None:
    """Steps: an engine whose loop has not started reading request_q; a request sent to it; then
    its loop starts. Expect /health/ready 503 with the engine stalled, naming the unread request,
    once it waited past the ping timeout; then the request answered 200 and readiness 200 again."""
    idle = _start(engines, "idle", reading=False)
    with running(api_builder(idle.address).build()) as base, ThreadPoolExecutor(1) as pool:
        wait_ready(base, 1)  # nothing waits unread yet
        waiting = pool.submit(post_all, base, "/generate", [{"prompt": "waiting"}])
        wait_until(lambda: httpx.get(f"{base}/health/ready", timeout=5).status_code == 503, 20, "readiness 503")
        view = engine_view(base, idle.address)
        assert view["state"] == "stalled" and "not reading request_q" in view["problem"], view
        idle.reading.set()
        answer = waiting.result(30)[0]
        assert (answer.status_code, answer.json()["text"]) == (200, "WAITING")
        wait_ready(base, 1)
