"""``engine.batch``: many requests, one call. Over real HTTP with a real child where the client's
view matters (statuses, cancellation, two workers), over the real queues where the engine's."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from isolated_api import CancelRequest, Engine, EngineError, ErrorReply, Result
from isolated_api.testing import running, spawn_queues, wait_until
from tests.engine.batch_jobs import BatchProbe, Embed, embed_route, hold_worker_route
from tests.engine.helpers import Replies, post_all, server

Queues = tuple[Any, Any]
ROUTES = [("/embed", embed_route)]


@pytest.fixture
def probe() -> Iterator[BatchProbe]:
    p = BatchProbe()
    yield p
    p.hold.set()  # never leave a held batch behind


def _engine(queues: Queues, probe: BatchProbe, **options: Any) -> Engine:
    engine = Engine(*queues)
    engine.batch(Embed, probe, **options)
    return engine


def test_batch_twenty_requests_arrive_as_four_calls_and_each_client_gets_its_own_answer(
    queues: Queues, probe: BatchProbe
) -> None:
    """Steps: max_batch_size=5 and a max_wait far longer than the test, 20 concurrent HTTP
    clients. Expect at most 4 calls (only full batches can go), 5 requests in each, and every
    client its own text upper-cased."""
    texts = [f"text-{i}" for i in range(20)]
    with _engine(queues, probe, max_batch_size=5, max_wait=60) as engine, running(server(queues, ROUTES)) as url:
        responses = post_all(f"{url}/embed", [{"text": t} for t in texts])
        assert [r.json() for r in responses] == [{"data": t.upper()} for t in texts]
        assert len(probe.calls) <= 4 and [len(c) for c in probe.calls] == [5, 5, 5, 5]
        assert sorted(probe.seen()) == sorted(texts)
        wait_until(lambda: engine.served == 20, 10, "the members to be counted")


def test_batch_a_lone_request_waits_max_wait_for_company(queues: Queues, probe: BatchProbe) -> None:
    """Steps: max_wait=0.3 s, one request. Expect it answered, alone in its batch, no sooner than
    max_wait after it was sent (and within a generous bound)."""
    with _engine(queues, probe, max_batch_size=8, max_wait=0.3), running(server(queues, ROUTES)) as url:
        started = time.monotonic()
        response = httpx.post(f"{url}/embed", json={"text": "alone"}, timeout=30)
        elapsed = time.monotonic() - started
        assert response.json() == {"data": "ALONE"} and probe.calls == [["alone"]]
        assert 0.3 <= elapsed < 10


def test_batch_max_wait_zero_dispatches_a_lone_request_at_once(queues: Queues, probe: BatchProbe) -> None:
    """Steps: max_wait=0, one client sending 10 requests one after another. Expect each in a batch
    of its own, dispatched as it came: the 10 take far less than the one 2-second max_wait that a
    waiting batcher would spend per request."""
    with _engine(queues, probe, max_batch_size=8, max_wait=0), running(server(queues, ROUTES)) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            client.post("/embed", json={"text": "warm-up"})
            started = time.monotonic()
            answers = [client.post("/embed", json={"text": f"t{i}"}).json() for i in range(10)]
            elapsed = time.monotonic() - started
        assert answers == [{"data": f"T{i}"} for i in range(10)]
        assert probe.calls == [["warm-up"]] + [[f"t{i}"] for i in range(10)]
        assert elapsed < 2.0


def test_batch_max_wait_zero_takes_what_is_already_queued(queues: Queues, probe: BatchProbe) -> None:
    """Steps: max_wait=0; a first batch is held while 6 more requests queue. Expect the next call
    to take the 6 at once (what was queued), never waiting for more."""
    request_q, response_q = queues
    probe.hold.clear()
    with _engine(queues, probe, max_batch_size=8, max_wait=0) as engine:
        request_q.put(Embed(0, "first"))
        wait_until(lambda: probe.running == 1, 10, "the first batch to start")
        for i in range(1, 7):
            request_q.put(Embed(i, f"t{i}"))
        wait_until(lambda: engine.running_count == 7, 10, "6 requests queued behind it")
        probe.hold.set()
        replies = Replies(response_q).take(7)
        assert sorted(r.id for r in replies) == list(range(7))
        assert probe.calls == [["first"], [f"t{i}" for i in range(1, 7)]]


def test_batch_an_item_error_fails_that_client_alone(queues: Queues, probe: BatchProbe) -> None:
    """Steps: one batch of 6 in which two items come back as EngineError(422) and EngineError(404).
    Expect those two clients 422 and 404 with their messages, the four others 200."""
    texts = ["a", "bad:422", "b", "c", "bad:404", "d"]
    with _engine(queues, probe, max_batch_size=6, max_wait=60), running(server(queues, ROUTES)) as url:
        responses = post_all(f"{url}/embed", [{"text": t} for t in texts])
        assert [r.status_code for r in responses] == [200, 422, 200, 200, 404, 200]
        assert responses[1].json() == {"detail": "cannot embed bad:422"}
        assert [r.json()["data"] for r in responses if r.status_code == 200] == ["A", "B", "C", "D"]
        assert len(probe.calls) == 1


def test_batch_a_raise_fails_every_member_and_the_next_batch_is_served(
    queues: Queues, probe: BatchProbe, caplog: pytest.LogCaptureFixture
) -> None:
    """Steps: a batch of 3 whose call raises ValueError; then one raising EngineError(409); then a
    good batch. Expect every member of the first 500 with one shared error id and one logged
    traceback; every member of the second 409; the third 200."""
    with _engine(queues, probe, max_batch_size=3, max_wait=60), running(server(queues, ROUTES)) as url:
        broken = post_all(f"{url}/embed", [{"text": t} for t in ("x", "raise", "y")])
        assert [r.status_code for r in broken] == [500, 500, 500]
        details = {r.json()["detail"] for r in broken}
        assert len(details) == 1 and details.pop().startswith("internal error (error id ")
        assert len([r for r in caplog.records if "the model broke" in str(r.exc_info)]) == 1
        refused = post_all(f"{url}/embed", [{"text": t} for t in ("x", "raise:409", "y")])
        assert [(r.status_code, r.json()) for r in refused] == [(409, {"detail": "refused by raise:409"})] * 3
        fine = post_all(f"{url}/embed", [{"text": t} for t in ("p", "q", "r")])
        assert [r.json() for r in fine] == [{"data": "P"}, {"data": "Q"}, {"data": "R"}]


def test_batch_a_result_list_of_the_wrong_length_fails_every_member(queues: Queues) -> None:
    request_q, response_q = queues
    with Engine(*queues) as engine:
        engine.batch(Embed, lambda requests: ["only one"], max_batch_size=3, max_wait=60)
        for i in range(3):
            request_q.put(Embed(i, "x"))
        replies = Replies(response_q).take(3)
        assert [(r.id, type(r), r.status_code) for r in sorted(replies, key=lambda r: r.id)] == [
            (i, ErrorReply, 500) for i in range(3)
        ]
        assert len({r.message for r in replies}) == 1
        wait_until(lambda: engine.failed == 3, 10, "the failures to be counted")


def test_batch_cost_budget_413_alone_and_a_raising_cost_fails_its_own_request(queues: Queues) -> None:
    """Steps: cost = len(text), max_cost=10; a 12-character request, one whose cost raises, then
    three of 4 characters. Expect 413 for the first, a 500 for the second, and the three served in
    two batches (4 + 4 fit, a third would pass the budget)."""
    request_q, response_q = queues
    calls: list[list[str]] = []

    def cost(request: Embed) -> float:
        if request.text == "boom":
            raise ValueError("cost function broke")
        return len(request.text)

    def embed(requests: list[Embed]) -> list[str]:
        calls.append([r.text for r in requests])
        return [r.text.upper() for r in requests]

    replies = Replies(response_q)
    with Engine(*queues) as engine:
        engine.batch(Embed, embed, max_batch_size=8, max_wait=0.2, cost=cost, max_cost=10)
        request_q.put(Embed("big", "twelve chars"))
        assert replies.next() == ErrorReply("big", "this request costs 12, more than a batch may (10)", 413)
        request_q.put(Embed("boom", "boom"))
        broke = replies.next()
        assert (broke.id, broke.status_code) == ("boom", 500)
        for i in range(3):
            request_q.put(Embed(i, f"ab{i}c"))
        results = replies.take(3)
        assert sorted((r.id, r.data) for r in results) == [(0, "AB0C"), (1, "AB1C"), (2, "AB2C")]
        assert calls == [["ab0c", "ab1c"], ["ab2c"]]


def test_batch_a_queued_cancel_never_reaches_the_handler(queues: Queues, probe: BatchProbe) -> None:
    """Steps: with_cancellation; a first batch held; a second client's request queued behind it;
    that client gives up. Expect its CancelRequest to remove it from the queue: once released, the
    handler never saw it, and the first client is answered."""
    probe.hold.clear()
    srv = server(queues, ROUTES, cancellation=True)
    with _engine(queues, probe, max_batch_size=4, max_wait=0) as engine, running(srv) as url:
        first: list[httpx.Response] = []
        holder = threading.Thread(
            target=lambda: first.append(httpx.post(f"{url}/embed", json={"text": "held"}, timeout=30))
        )
        holder.start()
        wait_until(lambda: probe.running == 1, 10, "the first batch to start")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/embed", json={"text": "gives-up"}, timeout=1.0)
        wait_until(lambda: engine.cancelled == 1 and engine.running_count == 1, 10, "the queued member to leave")
        probe.hold.set()
        holder.join(30)
        assert first[0].json() == {"data": "HELD"}
        assert probe.seen() == ["held"]


def test_batch_a_running_cancel_leaves_the_others_served(queues: Queues, probe: BatchProbe) -> None:
    """Steps: with_cancellation; a batch of 3 held; one client gives up. Expect that member's
    context marked cancelled (the batch not cancelled), and once released the two others 200."""
    probe.hold.clear()
    srv = server(queues, ROUTES, cancellation=True)
    with _engine(queues, probe, max_batch_size=3, max_wait=60) as engine, running(srv) as url:
        others: list[httpx.Response] = []
        stayers = threading.Thread(
            target=lambda: others.extend(post_all(f"{url}/embed", [{"text": "a"}, {"text": "b"}]))
        )
        stayers.start()
        wait_until(lambda: engine.running_count == 2, 10, "two members queued")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/embed", json={"text": "leaver"}, timeout=1.0)
        wait_until(lambda: engine.cancelled == 1, 10, "the running member to be cancelled")
        assert probe.running == 1 and len(probe.calls) == 1 and sorted(probe.calls[0]) == ["a", "b", "leaver"]
        probe.hold.set()
        stayers.join(30)
        assert sorted(r.json()["data"] for r in others) == ["A", "B"]
        assert probe.cancelled == ["leaver"]
        wait_until(lambda: engine.served == 2 and engine.running_count == 0, 10, "the two to be served")


def _let_go(fifo: Path) -> None:
    """Ends a hold_worker_route waiting on ``fifo`` (it has the FIFO open for reading)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def test_batch_two_http_workers_feed_one_batch(queues: Queues, probe: BatchProbe, tmp_path: Path) -> None:
    """Steps: 2 HTTP workers, max_batch_size=8 and a long max_wait (only a full batch goes). One
    worker held (its event loop blocked, so it accepts nothing) while 4 requests go on fresh
    connections: the other worker takes them. That one then held and the first let go: 4 more, taken
    by the first. Expect one batch of 8 holding requests from both workers, and every answer right.
    (Left to the kernel, which worker accepts a connection is not certain either way.)"""
    srv = server(queues, [*ROUTES, ("/hold", hold_worker_route)], workers=2)
    with _engine(queues, probe, max_batch_size=8, max_wait=60) as engine, running(srv) as url:
        held: list[httpx.Response] = []
        answers: list[list[httpx.Response]] = []

        def hold(name: str) -> threading.Thread:
            os.mkfifo(tmp_path / f"{name}.fifo")
            body = {"started": str(tmp_path / f"{name}.started"), "fifo": str(tmp_path / f"{name}.fifo")}
            thread = threading.Thread(target=lambda: held.append(httpx.post(f"{url}/hold", json=body, timeout=60)))
            thread.start()
            wait_until((tmp_path / f"{name}.started").exists, 30, f"a worker to be held ({name})")
            return thread

        def post_four(first: int) -> threading.Thread:
            texts = [{"text": f"t{i}"} for i in range(first, first + 4)]
            thread = threading.Thread(target=lambda: answers.append(post_all(f"{url}/embed", texts, timeout=60)))
            thread.start()
            return thread

        holders = [hold("a")]
        posts = [post_four(0)]
        wait_until(lambda: engine.running_count == 4, 30, "4 requests through the worker not held")
        holders.append(hold("b"))  # the held worker accepts nothing: the other one takes this
        _let_go(tmp_path / "a.fifo")
        holders[0].join(30)
        posts.append(post_four(4))
        wait_until(lambda: engine.running_count == 8 or probe.calls != [], 30, "4 more through the first worker")
        _let_go(tmp_path / "b.fifo")
        for thread in holders + posts:
            thread.join(60)
        assert {r.json()["pid"] for r in held} == {p.pid for p in srv.processes}
        assert sorted(r.json()["data"] for group in answers for r in group) == [f"T{i}" for i in range(8)]
        assert [len(c) for c in probe.calls] == [8]
        assert probe.workers[0] == {p.pid for p in srv.processes}


def test_batch_never_more_than_max_concurrent_batches_at_once(queues: Queues) -> None:
    """Steps: max_concurrent_batches=2, batches of 2, 16 requests, each call holding until a second
    call runs beside it (or 0.2 s). Expect 2 calls at once, never 3, and all 16 answered."""
    request_q, response_q = queues
    lock = threading.Lock()
    running_now: list[int] = [0]
    peak: list[int] = [0]
    pair = threading.Condition(lock)

    def embed(requests: list[Embed]) -> list[str]:
        with pair:
            running_now[0] += 1
            peak[0] = max(peak[0], running_now[0])
            pair.notify_all()
            pair.wait_for(lambda: running_now[0] >= 2, timeout=0.2)
        with pair:
            running_now[0] -= 1
        return [r.text for r in requests]

    with Engine(*queues, concurrency=8) as engine:
        engine.batch(Embed, embed, max_batch_size=2, max_wait=0, max_concurrent_batches=2)
        for i in range(16):
            request_q.put(Embed(i, str(i)))
        replies = Replies(response_q).take(16)
        assert sorted(r.id for r in replies) == list(range(16))
        assert peak[0] == 2


def test_batch_stop_with_forming_running_and_queued_members(queues: Queues, probe: BatchProbe) -> None:
    """Steps: batches of 2, one at a time, max_wait 60 s: [a, b] running (held), [c, d] full and
    queued for the batch slot, e forming alone. stop(timeout=30) in a thread. Expect stop() to wait
    for the work; once released a, b, c, d and e all answered (e's batch closed at once, not after
    60 s), and stop() returning."""
    request_q, response_q = queues
    probe.hold.clear()
    replies = Replies(response_q)
    engine = _engine(queues, probe, max_batch_size=2, max_wait=60).start()
    for text in "abcde":
        request_q.put(Embed(text, text))
    wait_until(lambda: probe.running == 1 and engine.running_count == 5, 10, "a batch running and 3 waiting")
    stopper = threading.Thread(target=engine.stop, args=(30.0,))
    stopper.start()
    wait_until(lambda: engine.is_stopping, 10, "stop() to begin")
    assert stopper.is_alive()
    probe.hold.set()
    answered = sorted(replies.take(5), key=lambda r: str(r.id))
    assert answered == [Result(t, t.upper()) for t in "abcde"]
    stopper.join(20)
    assert not stopper.is_alive() and not engine.is_running
    assert probe.calls == [["a", "b"], ["c", "d"], ["e"]]


def test_batch_stop_timeout_answers_every_member_503(queues: Queues, probe: BatchProbe) -> None:
    """Steps: a held batch, one member queued behind it; stop(timeout=0.2). Expect both 503 and the
    queued one never run."""
    request_q, response_q = queues
    probe.hold.clear()
    replies = Replies(response_q)
    engine = _engine(queues, probe, max_batch_size=1, max_wait=0).start()
    request_q.put(Embed("running", "r"))
    request_q.put(Embed("queued", "q"))
    wait_until(lambda: probe.running == 1 and engine.running_count == 2, 10, "one running, one queued")
    engine.stop(timeout=0.2)
    stopped = sorted(replies.take(2), key=lambda r: str(r.id))
    assert [(r.id, r.status_code) for r in stopped] == [("queued", 503), ("running", 503)]
    assert probe.seen() == ["r"] and not engine.is_running


def test_batch_past_max_queued_the_engine_stops_reading(queues: Queues, probe: BatchProbe) -> None:
    """Steps: max_batch_size=2, max_queued=4, a held batch, then 30 more requests. Expect the
    engine to stop taking from request_q (requests left there: what the HTTP side turns into 503
    at max_pending), and everything served once released."""
    request_q, response_q = queues
    probe.hold.clear()
    with _engine(queues, probe, max_batch_size=2, max_queued=4, max_wait=0) as engine:
        request_q.put(Embed(0, "0"))
        wait_until(lambda: probe.running == 1, 10, "the first batch to start")
        for i in range(1, 31):
            request_q.put(Embed(i, str(i)))
        # What the engine read is bounded: the running one, 4 queued, and at most the intake's
        # read-ahead (concurrency + max_waiting + 1 = 9) that was on its way when the gate closed.
        # Paused, and nothing in the intake's hands (every message either taken or on request_q):
        # the reader waits for room, so what is left on request_q stays there.
        wait_until(
            lambda: engine.reading_paused and engine.running_count + request_q.qsize() == 31,
            10,
            "the engine to stop reading",
        )
        assert 5 <= engine.running_count <= 1 + 4 + 9 and request_q.qsize() >= 30 - 4 - 9
        probe.hold.set()
        assert sorted(r.id for r in Replies(response_q).take(31)) == list(range(31))


def test_batch_refuses_bad_options(queues: Queues) -> None:
    engine = Engine(*queues)
    with pytest.raises(ValueError, match="max_queued"):
        engine.batch(Embed, max_batch_size=8, max_queued=4)
    with pytest.raises(ValueError, match="max_batch_size"):
        engine.batch(Embed, max_batch_size=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        engine.batch(Embed, max_batch_size=True)
    with pytest.raises(ValueError, match="max_wait"):
        engine.batch(Embed, max_wait=-1)
    with pytest.raises(ValueError, match="cost"):
        engine.batch(Embed, cost=len)
    with pytest.raises(TypeError, match="request class"):
        engine.batch("Embed")  # type: ignore[call-overload]
    engine.batch(Embed, lambda requests: requests)
    with pytest.raises(ValueError, match="already served"):
        engine.batch(Embed, lambda requests: requests)
    with pytest.raises(ValueError, match="already served"):
        engine.handle(Embed, lambda request: request)


def test_batch_async_function_and_decorator_form(queues: Queues) -> None:
    request_q, response_q = queues
    engine = Engine(*queues)

    @engine.batch(Embed, max_batch_size=4, max_wait=60)
    async def embed(requests: list[Embed]) -> list[Any]:
        return [r.text[::-1] if r.text != "no" else EngineError("no", 400) for r in requests]

    with engine:
        for i, text in enumerate(["abc", "no", "xy", "z"]):
            request_q.put(Embed(i, text))
        replies = sorted(Replies(response_q).take(4), key=lambda r: r.id)
        assert replies == [Result(0, "cba"), ErrorReply(1, "no", 400), Result(2, "yx"), Result(3, "z")]
    assert embed.__name__ == "embed"


def test_batch_results_leave_in_one_message(queues: Queues) -> None:
    request_q, response_q = queues
    replies = Replies(response_q)
    with Engine(*queues) as engine:
        engine.batch(Embed, lambda requests: [r.text for r in requests], max_batch_size=5, max_wait=60)
        for i in range(5):
            request_q.put(Embed(i, str(i)))
        replies.take(5)
        assert [len(m) for m in replies.messages] == [5]


def test_batch_cancel_request_for_a_queued_member_over_the_queues(queues: Queues, probe: BatchProbe) -> None:
    request_q, response_q = queues
    probe.hold.clear()
    with _engine(queues, probe, max_batch_size=4, max_wait=0) as engine:
        request_q.put(Embed("first", "first"))
        wait_until(lambda: probe.running == 1, 10, "the first batch to start")
        request_q.put(Embed("gone", "gone"))
        request_q.put(Embed("stays", "stays"))
        wait_until(lambda: engine.running_count == 3, 10, "two queued")
        request_q.put(CancelRequest("gone", "disconnected"))
        wait_until(lambda: engine.running_count == 2, 10, "the cancelled one to leave")
        probe.hold.set()
        replies = sorted(Replies(response_q).take(2), key=lambda r: str(r.id))
        assert replies == [Result("first", "FIRST"), Result("stays", "STAYS")]
        assert probe.calls == [["first"], ["stays"]]


@dataclass(frozen=True)
class _Plain:
    id: str
    text: str


def test_batch_a_forming_batch_whose_members_all_leave_frees_its_slot(queues: Queues, probe: BatchProbe) -> None:
    """Steps: an engine of concurrency 1 with a batch type (max_wait 60 s) and a plain handler; one
    batch member queued, so its batch forms in a worker thread, holding the engine's one slot;
    that member cancelled. Expect the forming batch to end there (nothing left to wait for), so a
    plain request is served within the test's deadline, not after the 60 s wait; the batch
    function is never called."""
    request_q, response_q = queues
    engine = Engine(request_q, response_q, concurrency=1)
    engine.batch(Embed, probe, max_batch_size=4, max_wait=60)
    engine.handle(_Plain, lambda request: request.text.upper())
    with engine:
        request_q.put(Embed("gone", "gone"))
        wait_until(lambda: engine.running_count == 1, 10, "the member to queue")
        request_q.put(CancelRequest("gone", "disconnected"))
        wait_until(lambda: engine.running_count == 0, 10, "the cancelled member to leave")
        request_q.put(_Plain("plain", "plain"))
        assert Replies(response_q).take(1, timeout=15) == [Result("plain", "PLAIN")]
        assert probe.calls == []


class _GatedQueue:
    """A response_q whose ``put`` blocks while ``gate`` is clear: a slow reply write, held."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self._items: queue.Queue[Any] = queue.Queue()

    def put(self, item: Any) -> None:
        self.gate.wait(30)
        self._items.put(item)

    def get(self, timeout: float | None = None) -> Any:
        return self._items.get(timeout=timeout)


def test_batch_the_next_call_starts_while_the_last_ones_replies_are_written(probe: BatchProbe) -> None:
    """Steps: batches of 1, one at a time; [a] running (held) and b queued; the reply writer then
    blocked, and a released. Expect b's call to start while a's reply is still being written (the
    model is not kept idle by the replies of the batch before), and both answered once the writer
    is free."""
    with spawn_queues() as (request_q, _):
        response_q = _GatedQueue()
        probe.hold.clear()
        engine = Engine(request_q, response_q)
        engine.batch(Embed, probe, max_batch_size=1, max_wait=0)
        with engine:
            request_q.put(Embed("a", "a"))
            wait_until(lambda: probe.running == 1, 10, "a's call running")
            request_q.put(Embed("b", "b"))
            wait_until(lambda: engine.running_count == 2, 10, "b queued behind it")
            probe.hold.set()  # a's call returns; its reply's write blocks on the gate
            wait_until(lambda: probe.calls == [["a"], ["b"]], 10, "b's call while a's reply is held")
            response_q.gate.set()
            replies = Replies(response_q)
            answered = sorted(replies.take(2), key=lambda r: str(r.id))
            assert answered == [Result("a", "A"), Result("b", "B")]
