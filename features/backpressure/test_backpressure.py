"""Backpressure over real HTTP, through a real child, against a main-process loop whose slowness
the test controls (requests are held until the test releases them), so nothing depends on timing."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from isolated_api import ErrorReply, IPCChannel, IPCConfig, Server
from isolated_api.testing import MainLoop, loopback_builder, running, wait_until

from .backpressure import (
    Job,
    JobDone,
    StreamJob,
    Token,
    job_route,
    load_route,
    stream_route,
    submit_unless_disconnected,
)


class Gate:
    """The main process: a Job "hold" waits for ``release``, "never" gets no answer, "fail" an
    ErrorReply(409), anything else its text upper-cased. A StreamJob gets its first token at once;
    with text "hold" the others only after ``release``."""

    def __init__(self, response_q: Any) -> None:
        self.response_q = response_q
        self.release = threading.Event()

    def __call__(self, request: Any) -> Any:
        if isinstance(request, StreamJob):
            self.response_q.put(Token(request.id, "0", is_final=request.count == 1))
            if request.text == "hold":
                self.release.wait(60)
            for i in range(1, request.count):
                self.response_q.put(Token(request.id, str(i), is_final=i == request.count - 1))
            return None
        assert isinstance(request, Job)
        if request.text == "never":
            return None
        if request.text == "hold":
            self.release.wait(60)
        if request.text == "fail":
            return ErrorReply(request.id, "refused by the main process", 409)
        return JobDone(request.id, request.text.upper())


@pytest.fixture
def gate(queues: tuple[Any, Any]) -> Iterator[tuple[Gate, MainLoop]]:
    behaviour = Gate(queues[1])
    loop = MainLoop(*queues, behaviour).start()
    yield behaviour, loop
    # Held answer threads must not outlive the test.
    behaviour.release.set()
    loop.stop()


def _server(queues: tuple[Any, Any], log: Path, *, max_pending: int, status: int = 503, retry_after: int = 1) -> Server:
    return (
        loopback_builder("backpressure", 60.0)
        .routes.with_route("/job", job_route, methods=["POST"])
        .with_route("/stream", stream_route, methods=["POST"])
        .with_route("/load", load_route)
        .done()
        .subprocess.with_ipc(*queues)
        .with_max_pending(max_pending)
        .with_overload_status(status, retry_after)
        .with_log_file(str(log))
        .done()
        # "info" so the log shows start-up: proof that the child's logging reaches the file we grep.
        .uvicorn.with_log_level("info")
        .done()
        .build()
    )


def _load(url: str) -> dict[str, int]:
    response = httpx.get(f"{url}/load", timeout=10)
    assert response.status_code == 200
    load: dict[str, int] = response.json()
    return load


def _received_texts(loop: MainLoop) -> list[str]:
    return [request.text for request in loop.received]


def _assert_no_traceback(log: Path) -> None:
    text = log.read_text()
    # The grep below means something only if the child's logging lands in this file.
    assert "Application startup complete" in text, text
    assert "Traceback" not in text, text


def test_backpressure_over_max_pending_is_503_and_never_reaches_main(
    queues: tuple[Any, Any], gate: tuple[Gate, MainLoop], tmp_path: Path
) -> None:
    """Steps: max_pending=2, two requests held by the main process, a third request, then release
    and one more request. Expect the third answered 503 + Retry-After with a JSON detail while the
    two are still held, the main process to receive only the held two and the last one (the pipe
    is ordered, so a forwarded third would have arrived before the last), and no traceback."""
    behaviour, loop = gate
    log = tmp_path / "child.log"
    with running(_server(queues, log, max_pending=2)) as url, ThreadPoolExecutor(2) as pool:
        try:
            held = [pool.submit(httpx.post, f"{url}/job", json={"text": "hold"}, timeout=30) for _ in range(2)]
            wait_until(lambda: len(loop.received) == 2, message="two held requests at the main process")
            assert _load(url)["pending"] == 2

            refused = httpx.post(f"{url}/job", json={"text": "refused"}, timeout=10)
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.headers["content-type"] == "application/json"
            assert "server busy" in refused.json()["detail"]
            assert not any(f.done() for f in held)
        finally:
            behaviour.release.set()
        assert [f.result().status_code for f in held] == [200, 200]
        assert httpx.post(f"{url}/job", json={"text": "after"}, timeout=10).json() == {"text": "AFTER"}
        assert _received_texts(loop) == ["hold", "hold", "after"]
        load = _load(url)
        assert (load["pending"], load["rejected"], load["max_pending"]) == (0, 1, 2)
    _assert_no_traceback(log)


def test_backpressure_overload_status_429_when_configured(
    queues: tuple[Any, Any], gate: tuple[Gate, MainLoop], tmp_path: Path
) -> None:
    """Steps: max_pending=1 with 429 and Retry-After 7; one held request, one more. Expect 429 with
    ``Retry-After: 7`` and a JSON detail."""
    behaviour, loop = gate
    log = tmp_path / "child.log"
    with running(_server(queues, log, max_pending=1, status=429, retry_after=7)) as url, ThreadPoolExecutor(1) as pool:
        try:
            held = pool.submit(httpx.post, f"{url}/job", json={"text": "hold"}, timeout=30)
            wait_until(lambda: len(loop.received) == 1, message="the held request at the main process")
            refused = httpx.post(f"{url}/job", json={"text": "refused"}, timeout=10)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "7"
            assert "server busy" in refused.json()["detail"]
        finally:
            behaviour.release.set()
        assert held.result().status_code == 200
        assert _load(url)["rejected"] == 1
    _assert_no_traceback(log)


def test_backpressure_streams_share_the_limit_and_overload_is_a_real_503(
    queues: tuple[Any, Any], gate: tuple[Gate, MainLoop], tmp_path: Path
) -> None:
    """Steps: max_pending=1; a stream whose first token arrived and the rest is held takes the
    slot; then a unary request and a stream request. Expect both refused with a 503 status (not a
    200 followed by an error), then after release the held stream completes, in order."""
    behaviour, loop = gate
    log = tmp_path / "child.log"
    with running(_server(queues, log, max_pending=1)) as url, httpx.Client(timeout=30) as client:
        try:
            with client.stream("POST", f"{url}/stream", json={"text": "hold", "count": 5}) as stream:
                assert stream.status_code == 200
                lines = stream.iter_lines()
                assert next(lines) == '{"text": "0"}'
                assert _load(url)["pending"] == 1
                assert httpx.post(f"{url}/job", json={"text": "x"}, timeout=10).status_code == 503
                refused = httpx.post(f"{url}/stream", json={"text": "y", "count": 3}, timeout=10)
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "1"
                assert "server busy" in refused.json()["detail"]
                behaviour.release.set()
                assert list(lines) == [f'{{"text": "{i}"}}' for i in range(1, 5)]
        finally:
            behaviour.release.set()
        assert _received_texts(loop) == ["hold"]
        load = _load(url)
        assert (load["pending"], load["rejected"]) == (0, 2)
    _assert_no_traceback(log)


def test_backpressure_pending_returns_to_zero_after_timeout_and_error(
    queues: tuple[Any, Any], gate: tuple[Gate, MainLoop], tmp_path: Path
) -> None:
    """Steps: a request the main process never answers, with a 0.3 s timeout; a request the main
    process fails with ErrorReply(409). Expect 504 and 409, and pending back to 0 after each."""
    log = tmp_path / "child.log"
    with running(_server(queues, log, max_pending=4)) as url:
        timed_out = httpx.post(f"{url}/job", json={"text": "never", "timeout": 0.3}, timeout=10)
        assert timed_out.status_code == 504
        assert _load(url)["pending"] == 0
        failed = httpx.post(f"{url}/job", json={"text": "fail"}, timeout=10)
        assert failed.status_code == 409
        assert failed.json() == {"detail": "refused by the main process"}
        assert _load(url)["pending"] == 0
    _assert_no_traceback(log)


def test_backpressure_client_disconnect_frees_the_slot_at_once(
    queues: tuple[Any, Any], gate: tuple[Gate, MainLoop], tmp_path: Path
) -> None:
    """Steps: max_pending=1 and a 60 s response timeout; a client gives up (0.5 s read timeout) on
    a request the main process never answers. Expect pending back to 0 long before the response
    timeout, and the freed slot to admit the next request."""
    _, loop = gate
    log = tmp_path / "child.log"
    with running(_server(queues, log, max_pending=1)) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/job", json={"text": "never"}, timeout=0.5)
        assert _received_texts(loop) == ["never"]
        # 20 s, far below the 60 s response timeout: only the disconnect can free the slot this soon.
        wait_until(lambda: _load(url)["pending"] == 0, timeout=20.0, message="the abandoned request to leave")
        assert httpx.post(f"{url}/job", json={"text": "next"}, timeout=10).json() == {"text": "NEXT"}
        assert _load(url)["rejected"] == 0
    _assert_no_traceback(log)


def test_backpressure_abandoned_stream_frees_the_slot_and_drops_its_chunks(
    queues: tuple[Any, Any], gate: tuple[Gate, MainLoop], tmp_path: Path
) -> None:
    """Steps: a stream of 50 tokens, the main process holding all but the first; the client reads
    the first line and leaves. Expect pending back to 0 while the main process still holds the
    rest; after release its 49 late tokens are dropped in the main process, and the server serves."""
    behaviour, loop = gate
    log = tmp_path / "child.log"
    server = _server(queues, log, max_pending=1)
    with running(server) as url:
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("POST", f"{url}/stream", json={"text": "hold", "count": 50}) as stream,
            ):
                assert next(stream.iter_lines()) == '{"text": "0"}'
            wait_until(lambda: _load(url)["pending"] == 0, timeout=20.0, message="the abandoned stream to leave")
            # ... and the relay has heard it, so every late token is dropped there.
            relay = server.ipc
            assert relay is not None and relay.is_running  # subprocess mode: the relay serves this server
            wait_until(lambda: relay.pending_count == 0, timeout=10.0, message="the relay to forget the stream")
            assert not behaviour.release.is_set()
        finally:
            behaviour.release.set()
        wait_until(lambda: relay.dropped_count == 49, message="the 49 late tokens to be dropped")
        assert httpx.post(f"{url}/job", json={"text": "next"}, timeout=10).json() == {"text": "NEXT"}
        assert _received_texts(loop) == ["hold", "next"]
    _assert_no_traceback(log)


async def _burst(url: str, count: int, loop: MainLoop, behaviour: Gate, admitted: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count + 1, max_keepalive_connections=count + 1)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks = [asyncio.ensure_future(client.post(f"{url}/job", json={"text": "hold"})) for _ in range(count)]
        try:
            # Condition wait (no fixed sleep): every rejection answered while the admitted are held.
            deadline = asyncio.get_running_loop().time() + 60
            while sum(t.done() for t in tasks) < count - admitted or len(loop.received) < admitted:
                assert asyncio.get_running_loop().time() < deadline, "the burst's rejections did not all arrive"
                await asyncio.sleep(0.01)
            assert len(loop.received) == admitted
            rejected = [t.result() for t in tasks if t.done()]
            assert len(rejected) == count - admitted
            assert all(r.status_code == 503 and r.headers["retry-after"] == "1" for r in rejected)
        finally:
            behaviour.release.set()
        return list(await asyncio.gather(*tasks))


def test_backpressure_overload_burst_admits_exactly_max_pending(
    queues: tuple[Any, Any], gate: tuple[Gate, MainLoop], tmp_path: Path
) -> None:
    """Steps: max_pending=10, the main process holds every request; 200 concurrent requests.
    Expect 190 answered 503 while the 10 admitted are still held, the main process to receive
    exactly 10, those 10 to succeed on release, and the server to serve normally right after."""
    behaviour, loop = gate
    log = tmp_path / "child.log"
    with running(_server(queues, log, max_pending=10)) as url:
        responses = asyncio.run(_burst(url, 200, loop, behaviour, admitted=10))
        statuses = [r.status_code for r in responses]
        assert (statuses.count(200), statuses.count(503)) == (10, 190)
        assert all(r.json() == {"text": "HOLD"} for r in responses if r.status_code == 200)
        assert httpx.post(f"{url}/job", json={"text": "after"}, timeout=10).json() == {"text": "AFTER"}
        load = _load(url)
        assert (load["pending"], load["rejected"]) == (0, 190)
        assert len(loop.received) == 11
    _assert_no_traceback(log)


def test_backpressure_cancelled_handler_frees_its_slot() -> None:
    """In-process channel over thread queues: a task awaiting ``submit_unless_disconnected`` is
    cancelled once its request reached the main side. Expect the cancellation to propagate and the
    slot to be free by the time the task has finished, with nothing left routed."""

    class _ConnectedClient:
        # A client that never disconnects: only the cancellation can end the wait.
        async def receive(self) -> dict[str, Any]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    async def scenario() -> None:
        request_q: queue.Queue[Any] = queue.Queue()
        response_q: queue.Queue[Any] = queue.Queue()
        channel = IPCChannel(request_q, response_q, IPCConfig(max_pending=1))
        await channel.start_polling()
        try:
            task = asyncio.ensure_future(
                submit_unless_disconnected(_ConnectedClient(), channel, Job("a", "x"))  # type: ignore[arg-type]
            )
            received = await asyncio.to_thread(request_q.get, timeout=10)
            assert received == Job("a", "x") and channel.pending_count == 1
            task.cancel()
            await asyncio.wait((task,))
            assert task.cancelled()
            assert channel.pending_count == 0
            # The freed slot admits the next request at once.
            second = asyncio.ensure_future(channel.submit(Job("b", "y")))
            assert (await asyncio.to_thread(request_q.get, timeout=10)).id == "b"
            response_q.put(JobDone("b", "Y"))
            assert await second == JobDone("b", "Y")
        finally:
            await channel.stop_polling()

    asyncio.run(scenario())
