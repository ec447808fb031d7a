"""The engine over real multiprocessing queues, and end to end over real HTTP with a real child:
handler kinds, error statuses, streams, the concurrency bound, cancellation and graceful stop."""

from __future__ import annotations

import queue
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from isolated_api import CancelRequest, Engine, ErrorReply, HealthPing, HealthStatus, Result, StreamChunk
from isolated_api.testing import loopback_builder, running, wait_until

from .engine_jobs import (
    Count,
    CountAsync,
    Fail,
    Hold,
    Probe,
    Reverse,
    Upper,
    count,
    count_async,
    fail,
    reverse,
    upper,
)
from .engine_routes import health_route, run_route, stream_route

Queues = tuple[Any, Any]


def _engine(queues: Queues, concurrency: int = 8, probe: Probe | None = None) -> Engine:
    engine = Engine(*queues, concurrency=concurrency)
    engine.handle(Upper, upper)
    engine.handle(Reverse, reverse)
    engine.handle(Fail, fail)
    engine.handle(Count, count)
    engine.handle(CountAsync, count_async)
    if probe is not None:
        engine.handle(Hold, probe.hold_sync)
    return engine


@pytest.fixture
def probe() -> Iterator[Probe]:
    p = Probe()
    yield p
    p.release.set()  # never leave a held handler behind


# Replies read from a queue but not yet returned: the engine may put several in one message (a
# list, which the server's relay unpacks); these tests read response_q as the relay would.
_unread: weakref.WeakKeyDictionary[Any, deque[Any]] = weakref.WeakKeyDictionary()


def _next(response_q: Any, timeout: float = 10.0) -> Any:
    pending = _unread.setdefault(response_q, deque())
    if not pending:
        message = response_q.get(timeout=timeout)
        pending.extend(message if type(message) is list else [message])
    return pending.popleft()


def _replies(response_q: Any, count_: int, timeout: float = 10.0) -> list[Any]:
    return [_next(response_q, timeout) for _ in range(count_)]


def _stream(response_q: Any, timeout: float = 10.0) -> list[Any]:
    chunks = [_next(response_q, timeout)]
    while type(chunks[-1]) is StreamChunk and not chunks[-1].is_final:
        chunks.append(_next(response_q, timeout))
    return chunks


def test_engine_sync_and_async_handlers_reply_with_their_result(queues: Queues) -> None:
    request_q, response_q = queues
    with _engine(queues):
        request_q.put(Upper("u", "hello"))
        assert _next(response_q) == Result("u", "HELLO")
        request_q.put(Reverse("r", "abc"))
        assert _next(response_q) == Result("r", "cba")


def test_engine_errors_become_error_replies_and_the_loop_goes_on(queues: Queues) -> None:
    """Steps: an EngineError(404), a plain ValueError, a type with no handler, then a good request.
    Expect 404 with its message, a generic 500 with an error id (never the ValueError's text), 501,
    then the good reply."""
    request_q, response_q = queues
    with _engine(queues) as engine:
        request_q.put(Fail("a", "no such model", 404))
        assert _next(response_q) == ErrorReply("a", "no such model", 404)
        request_q.put(Fail("b", "bad input"))
        failed = _next(response_q)
        assert (failed.id, failed.status_code) == ("b", 500) and failed.message.startswith("internal error (error id ")
        request_q.put(HealthStatus("c", 0, 0, 0, 0, 0))  # a type nobody handles
        reply = _next(response_q)
        assert type(reply) is ErrorReply and reply.status_code == 501 and "HealthStatus" in reply.message
        request_q.put(Upper("d", "still here"))
        assert _next(response_q) == Result("d", "STILL HERE")
        wait_until(lambda: (engine.failed, engine.served, engine.refused) == (2, 1, 1), 10, "the counters")


def test_engine_catch_all_handler_serves_unregistered_types(queues: Queues) -> None:
    request_q, response_q = queues
    with Engine(*queues) as engine:
        engine.handle(Upper, upper)
        engine.handle(object, lambda request: f"caught {type(request).__name__}")
        request_q.put(Reverse("x", "abc"))
        assert _next(response_q) == Result("x", "caught Reverse")
        request_q.put(Upper("y", "abc"))
        assert _next(response_q) == Result("y", "ABC")


def test_engine_generators_stream_chunks_in_order_ending_final(queues: Queues) -> None:
    """A sync generator's chunks, then a final chunk carrying its return value; an async
    generator's chunks, then a final chunk with None."""
    request_q, response_q = queues
    with _engine(queues):
        request_q.put(Count("s", 5))
        chunks = _stream(response_q)
        assert [(c.id, c.data, c.is_final) for c in chunks] == [("s", i, False) for i in range(5)] + [
            ("s", "counted 5", True)
        ]
        request_q.put(CountAsync("a", 3))
        chunks = _stream(response_q)
        assert [(c.data, c.is_final) for c in chunks] == [(0, False), (1, False), (2, False), (None, True)]


def test_engine_concurrency_bound_holds_and_the_rest_stay_queued(queues: Queues, probe: Probe) -> None:
    """Steps: concurrency=3, ten held requests. Expect exactly 3 started, one more taken (parked so
    the reader still hears cancellations) and 6 left on request_q (backpressure); once released,
    all ten answered with never more than 3 at once."""
    request_q, response_q = queues
    with _engine(queues, concurrency=3, probe=probe) as engine:
        for i in range(10):
            request_q.put(Hold(i, str(i)))
        wait_until(lambda: probe.running == 3, 10, "3 handlers running")
        wait_until(lambda: request_q.qsize() == 6, 10, "6 requests left on request_q")
        assert engine.running_count == 4 and probe.max_running == 3
        probe.release.set()
        replies = _replies(response_q, 10)
        assert sorted(r.id for r in replies) == list(range(10))
        assert all(type(r) is Result and r.data == f"held {r.id}" for r in replies)
        assert probe.max_running == 3


def test_engine_max_waiting_reads_ahead_and_a_waiting_request_can_be_cancelled(queues: Queues, probe: Probe) -> None:
    """Steps: concurrency=2, max_waiting=2, four held requests. Expect 2 running and 2 taken from
    request_q to wait for a slot (the reader still listening: room for one more); a CancelRequest
    for a waiting one means it never runs and gets no reply; once released, the other three are
    answered, never more than 2 at once."""
    request_q, response_q = queues
    engine = Engine(*queues, concurrency=2, max_waiting=2)
    engine.handle(Hold, probe.hold_sync)
    with engine:
        for i in range(4):
            request_q.put(Hold(i, str(i)))
        wait_until(lambda: probe.running == 2 and engine.running_count == 4, 10, "2 running and 2 waiting")
        waiting = next(i for i in range(4) if i not in probe.started)
        request_q.put(CancelRequest(waiting, "disconnected"))
        wait_until(lambda: engine.cancelled == 1, 10, "the waiting request to be cancelled")
        probe.release.set()
        replies = _replies(response_q, 3)
        assert sorted(r.id for r in replies) == sorted(set(range(4)) - {waiting})
        assert waiting not in probe.started and probe.max_running == 2


def test_engine_cancel_request_cancels_an_async_handler_and_nothing_is_replied(queues: Queues, probe: Probe) -> None:
    """Steps: an async handler holds request "c"; CancelRequest("c") arrives. Expect the handler to
    see CancelledError, and the next reply on response_q to be the one for a later request."""
    request_q, response_q = queues
    with Engine(*queues) as engine:
        engine.handle(Hold, probe.hold_async)
        engine.handle(Upper, upper)
        request_q.put(Hold("c"))
        wait_until(lambda: probe.running == 1, 10, "the handler to start")
        request_q.put(CancelRequest("c", "disconnected"))
        wait_until(lambda: engine.running_count == 0, 10, "the cancelled job to end")
        assert probe.cancelled == [("c", "disconnected")]
        request_q.put(Upper("after", "x"))
        assert _next(response_q) == Result("after", "X")
        assert engine.cancelled == 1


def test_engine_cancel_request_sets_the_context_of_a_sync_handler(queues: Queues, probe: Probe) -> None:
    request_q, response_q = queues
    with _engine(queues, probe=probe) as engine:
        request_q.put(Hold("s"))
        wait_until(lambda: probe.running == 1, 10, "the handler to start")
        request_q.put(CancelRequest("s", "timeout"))
        wait_until(lambda: engine.running_count == 0, 10, "the sync handler to notice")
        assert probe.cancelled == [("s", "timeout")]
        request_q.put(Upper("after", "y"))
        assert _next(response_q) == Result("after", "Y")  # its return value was not sent


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_engine_cancel_request_stops_a_generator(queues: Queues, probe: Probe, kind: str) -> None:
    """Steps: a generator yields "first" then holds; CancelRequest. Expect "first", then no more
    chunks (no final), the generator closed, and the next reply being a later request's."""
    request_q, response_q = queues
    with Engine(*queues) as engine:
        engine.handle(Hold, probe.hold_stream if kind == "sync" else probe.hold_stream_async)
        engine.handle(Upper, upper)
        request_q.put(Hold("g"))
        assert _next(response_q) == StreamChunk("g", "first", False)
        request_q.put(CancelRequest("g", "disconnected"))
        wait_until(lambda: engine.running_count == 0, 10, "the generator to stop")
        assert probe.running == 0 and probe.finished == [] and [c[0] for c in probe.cancelled] == ["g"]
        request_q.put(Upper("after", "z"))
        assert _next(response_q) == Result("after", "Z")


def test_engine_stop_lets_in_flight_work_finish(queues: Queues, probe: Probe) -> None:
    """Steps: concurrency=2, two held requests, a third taken and waiting for a slot, a fourth left
    queued by backpressure; stop(timeout=30) in a thread; release. Expect the queued one refused
    with 503 (the engine stops taking work), the three in flight answered normally, and stop()
    returning well before its timeout."""
    request_q, response_q = queues
    engine = _engine(queues, concurrency=2, probe=probe).start()
    request_q.put(Hold(1, "one"))
    request_q.put(Hold(2, "two"))
    request_q.put(Upper("waiting", "in flight"))
    request_q.put(Upper("queued", "not started"))
    wait_until(lambda: probe.running == 2 and engine.running_count == 3, 10, "2 running and 1 waiting")
    wait_until(lambda: request_q.qsize() == 1, 10, "1 request left on request_q")
    stopper = threading.Thread(target=engine.stop, args=(30.0,))
    stopper.start()
    assert _next(response_q) == ErrorReply("queued", "the engine is stopping", 503)
    assert stopper.is_alive()  # still waiting for the in-flight work
    probe.release.set()
    replies = sorted(_replies(response_q, 3), key=lambda r: str(r.id))
    assert replies == [Result(1, "held one"), Result(2, "held two"), Result("waiting", "IN FLIGHT")]
    stopper.join(10)
    assert not stopper.is_alive() and not engine.is_running
    assert probe.max_running == 2
    engine.stop()  # twice is harmless


def test_engine_stop_timeout_cancels_what_is_left_with_503(queues: Queues, probe: Probe) -> None:
    request_q, response_q = queues
    engine = Engine(*queues)
    engine.handle(Hold, probe.hold_async)
    engine.start()
    request_q.put(Hold("stuck"))
    wait_until(lambda: probe.running == 1, 10, "the handler to start")
    engine.stop(timeout=0.1)
    assert _next(response_q) == ErrorReply("stuck", "the engine stopped before this request finished", 503)
    assert [c[0] for c in probe.cancelled] == ["stuck"] and not engine.is_running


def test_engine_answers_health_pings_itself(queues: Queues) -> None:
    request_q, response_q = queues
    with _engine(queues, concurrency=4) as engine:
        request_q.put(Upper("u", "a"))
        assert _next(response_q) == Result("u", "A")
        wait_until(lambda: engine.served == 1, 10, "the job to be counted")
        request_q.put(HealthPing("h"))
        assert _next(response_q) == HealthStatus("h", running=0, concurrency=4, served=1, failed=0, cancelled=0)


def test_engine_refuses_bad_arguments_and_drops_idless_messages(queues: Queues) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Engine(*queues, concurrency=0)
    request_q, response_q = queues
    with _engine(queues) as engine:
        with pytest.raises(TypeError, match="request class"):
            engine.handle("Upper", upper)  # type: ignore[call-overload]
        request_q.put("no id at all")
        request_q.put(Upper("ok", "b"))
        assert _next(response_q) == Result("ok", "B")
        assert not _unread[response_q]
        with pytest.raises(queue.Empty):
            response_q.get_nowait()


# -- end to end: real HTTP, a real child, the engine in this process ----------------------------


def _server(queues: Queues) -> Any:
    return (
        loopback_builder("engine")
        .routes.with_route("/run/{op}", run_route, methods=["POST"])
        .with_route("/stream/{op}", stream_route, methods=["POST"])
        .with_route("/engine-health", health_route)
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )


def test_engine_http_unary_handlers_and_error_statuses(queues: Queues) -> None:
    """Steps: the engine serves the queues of a real HTTP child. Expect sync and async results,
    EngineError's status with its message, a generic 500 for a plain exception, and the
    engine's own health answer."""
    with _engine(queues) as engine, running(_server(queues)) as url, httpx.Client(base_url=url, timeout=10) as client:
        post = client.post
        assert post("/run/upper", json={"text": "hi"}).json() == {"data": "HI"}
        assert post("/run/reverse", json={"text": "abc"}).json() == {"data": "cba"}
        refused = post("/run/fail", json={"message": "model not loaded", "status": 409})
        assert (refused.status_code, refused.json()) == (409, {"detail": "model not loaded"})
        broken = post("/run/fail", json={"message": "division by zero"})
        assert broken.status_code == 500 and broken.json()["detail"].startswith("internal error (error id ")
        wait_until(lambda: (engine.served, engine.failed) == (2, 2), 10, "the jobs to be counted")
        health = client.get("/engine-health").json()
        assert health == {"running": 0, "concurrency": 8, "served": 2, "failed": 2, "cancelled": 0}


@pytest.mark.parametrize(("op", "expected"), [("count", "counted 4"), ("count_async", None)])
def test_engine_http_stream_chunks_arrive_in_order_ending_final(queues: Queues, op: str, expected: Any) -> None:
    with _engine(queues), running(_server(queues)) as url:
        body = httpx.post(f"{url}/stream/{op}", json={"n": 4}, timeout=10).json()
        assert body == {"data": [0, 1, 2, 3, expected], "final": [False, False, False, False, True]}


def test_engine_http_many_clients_each_get_their_own_answer(queues: Queues) -> None:
    texts = [uuid.uuid4().hex for _ in range(40)]
    with _engine(queues, concurrency=4), running(_server(queues)) as url:
        with httpx.Client(base_url=url, timeout=10) as client:
            results: dict[str, Any] = {}

            def call(text: str) -> None:
                results[text] = client.post("/run/upper", json={"text": text}).json()

            threads = [threading.Thread(target=call, args=(t,)) for t in texts]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        assert results == {t: {"data": t.upper()} for t in texts}


@pytest.mark.parametrize("kind", ["async", "stream"])
def test_engine_http_client_gone_cancels_the_running_handler(queues: Queues, probe: Probe, kind: str) -> None:
    """Steps: a server built with .with_cancellation(); the engine holds the request (an async
    handler, or a generator after its first chunk); the client gives up after 0.5 s. Expect the
    CancelRequest to reach the engine and the handler to be cancelled, without releasing it."""
    server = (
        loopback_builder("engine-cancel")
        .routes.with_route("/run/{op}", run_route, methods=["POST"])
        .with_route("/stream/{op}", stream_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .with_cancellation()
        .done()
        .build()
    )
    with Engine(*queues) as engine, running(server) as url:
        engine.handle(Hold, probe.hold_async if kind == "async" else probe.hold_stream_async)
        path = "/run/hold" if kind == "async" else "/stream/hold"
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}{path}", json={"tag": "slow"}, timeout=0.5)
        wait_until(lambda: len(probe.cancelled) == 1, 10, "the handler to be cancelled")
        wait_until(lambda: engine.running_count == 0 and engine.cancelled == 1, 10, "the job to end")
        assert probe.finished == [] and not probe.release.is_set()
