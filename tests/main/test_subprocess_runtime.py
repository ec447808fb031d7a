"""The HTTP child as a process: crashes don't poison the main process, orphans don't survive,
spawn is the default and fork works, and what can't be pickled is reported by build()."""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response

from isolated_api import BuildError, ServerBuilder
from isolated_api.main.subprocess_manager import SubprocessManager
from isolated_api.shared.config import DEFAULT_CHILD_GC_THRESHOLD
from isolated_api.testing import pid_alive, running, wait_until
from tests.helpers import MainLoop, Work, builder, held_until, new_id, ping_route, upper_route

REPO = Path(__file__).resolve().parents[2]


def _server(queues: tuple[Any, Any], start_method: str = "spawn") -> Any:
    return (
        builder("runtime")
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .with_route("/ping", ping_route)
        .done()
        .subprocess.with_ipc(*queues)
        .with_start_method(start_method)
        .done()
        .build()
    )


def _pending_in(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/pending", timeout=5).json()["pending"])


def _port_refuses(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _ignore_sigterm_forever(ready: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    while True:
        time.sleep(60)


def _exit_quietly() -> None:
    return None


def test_subprocess_runtime_manager_kills_a_child_that_ignores_sigterm() -> None:
    """Steps: start a child that ignores SIGTERM; stop(timeout=0.5). Expect it killed (SIGKILL)."""
    ready = multiprocessing.get_context("spawn").Event()
    manager = SubprocessManager(_ignore_sigterm_forever, (ready,), shutdown_timeout=0.5)
    process = manager.start()
    assert ready.wait(20), "the child never installed its SIGTERM handler"
    assert manager.is_alive() and manager.pid == process.pid
    assert manager.stop() == -signal.SIGKILL
    assert not manager.is_alive()
    assert manager.stop() == -signal.SIGKILL  # twice is harmless


def test_subprocess_runtime_manager_reports_a_clean_exit() -> None:
    manager = SubprocessManager(_exit_quietly)
    manager.start()
    manager.join(20)
    assert manager.exitcode == 0
    assert manager.stop() == 0


def test_subprocess_runtime_manager_rejects_unknown_start_method() -> None:
    with pytest.raises(ValueError, match="start_method"):
        SubprocessManager(_exit_quietly, start_method="teleport")


def test_subprocess_runtime_default_start_method_is_spawn(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: start the child with defaults. Expect a spawned interpreter (its parent's pid, a fresh
    multiprocessing start method), serving real HTTP."""
    server = _server(queues)
    with running(server) as url:
        assert server.process is not None
        assert server.process._start_method == "spawn"
        assert httpx.post(f"{url}/upper", json={"text": "a"}, timeout=10).json()["text"] == "A"


def test_subprocess_runtime_fork_is_selectable(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    server = _server(queues, start_method="fork")
    with running(server) as url:
        assert server.process is not None
        assert server.process._start_method == "fork"
        assert httpx.post(f"{url}/upper", json={"text": "b"}, timeout=10).json()["text"] == "B"


async def gc_threshold_route() -> dict[str, int]:
    return {"first": gc.get_threshold()[0]}


def _served_gc_threshold(queues: tuple[Any, Any], *threshold: int | None) -> int:
    b = builder("gc").routes.with_route("/gc", gc_threshold_route).done().subprocess.with_ipc(*queues)
    if threshold:
        b.with_gc_threshold(threshold[0])
    with running(b.done().build()) as url:
        first: int = httpx.get(f"{url}/gc", timeout=10).json()["first"]
    return first


def test_subprocess_runtime_child_collects_garbage_at_the_configured_threshold(queues: tuple[Any, Any]) -> None:
    """Steps: ask the child for gc.get_threshold() by default, with 5,000, and with None. Expect
    100,000, 5,000, and what a fresh interpreter starts with; this process's own stays as it was."""
    own = gc.get_threshold()
    fresh = subprocess.run(
        [sys.executable, "-c", "import gc; print(gc.get_threshold()[0])"], capture_output=True, text=True, check=True
    )
    assert _served_gc_threshold(queues) == DEFAULT_CHILD_GC_THRESHOLD == 100_000
    assert _served_gc_threshold(queues, 5_000) == 5_000
    assert _served_gc_threshold(queues, None) == int(fresh.stdout) != 100_000
    assert gc.get_threshold() == own


def test_subprocess_runtime_build_names_an_unpicklable_handler(queues: tuple[Any, Any]) -> None:
    def local_handler() -> dict[str, str]:
        return {}

    b = ServerBuilder("x").routes.with_route("/local", local_handler).done().subprocess.with_ipc(*queues).done()
    with pytest.raises(BuildError, match=r"local_handler.*/local"):
        b.build()
    lam = ServerBuilder("y").routes.with_route("/lam", lambda: {}).done().subprocess.with_ipc(*queues).done()
    with pytest.raises(BuildError, match="<lambda>"):
        lam.build()


def _post_ignoring_errors(url: str, body: dict[str, Any]) -> int | None:
    try:
        return httpx.post(url, json=body, timeout=30).status_code
    except httpx.HTTPError:
        return None


def test_subprocess_runtime_sigkill_never_poisons_the_main_process(
    queues: tuple[Any, Any], main_loop: MainLoop
) -> None:
    """Steps, three times: 8 requests in flight (the main process holds them), SIGKILL the child,
    then start_subprocess() on the same Server. Expect: the in-flight clients see the connection
    drop (never a reply meant for someone else), the relay forgets the dead child's requests, the
    main process's queues keep working both ways, and the new child answers 20 requests with 200."""
    release = threading.Event()
    main_loop.behaviour = held_until(release)
    server = _server(queues)
    server.start_subprocess()
    try:
        with ThreadPoolExecutor(8) as pool:
            for round_ in range(3):
                _kill_with_requests_in_flight(server, main_loop, release, pool, round_)
                _serve_after_restart(server, main_loop, queues[0], round_)
    finally:
        release.set()
        server.stop()


def _kill_with_requests_in_flight(
    server: Any, main_loop: MainLoop, release: threading.Event, pool: ThreadPoolExecutor, round_: int
) -> None:
    release.clear()
    url = f"http://127.0.0.1:{server.port}/upper"
    before = len(main_loop.received)
    futures = [pool.submit(_post_ignoring_errors, url, {"text": f"r{round_}-{i}"}) for i in range(8)]
    wait_until(lambda: len(main_loop.received) >= before + 8, 20, "requests to reach the main process")
    assert server.ipc.pending_count == 8
    os.kill(server.process.pid, signal.SIGKILL)
    assert [f.result(30) for f in futures] == [None] * 8
    wait_until(lambda: not server.is_running, 10, "the child's death to be noticed")
    assert server.ipc.pending_count == 0
    # The held requests get answered now: their replies find no route and are dropped.
    dropped_before = server.ipc.dropped_count
    release.set()
    wait_until(lambda: server.ipc.dropped_count >= dropped_before + 8, 10, "late replies to be dropped")


def _serve_after_restart(server: Any, main_loop: MainLoop, request_q: Any, round_: int) -> None:
    server.start_subprocess()
    with httpx.Client(timeout=20) as client:
        for i in range(20):
            response = client.post(f"http://127.0.0.1:{server.port}/upper", json={"text": f"a{i}"})
            assert response.status_code == 200 and response.json()["text"] == f"A{i}"
    # The user's queue itself still works both ways.
    marker = f"direct{round_}"
    request_q.put(Work(new_id(), marker))
    wait_until(lambda: any(getattr(r, "text", "") == marker for r in main_loop.received), 10, "direct put")


class _PassThrough(BaseHTTPMiddleware):
    """A user middleware that runs the rest of the app in a task of its own (call_next)."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)


def test_subprocess_runtime_a_dead_workers_requests_are_logged_with_their_method_and_path(
    queues: tuple[Any, Any], main_loop: MainLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Steps: a server with a user middleware that runs the handler in another task; two
    requests held by the main process; SIGKILL the worker. Expect the main process's log line to
    name both requests' ids with the method and path the client sent (the origin travels with
    each request from the worker), not "origin unknown"."""
    release = threading.Event()
    main_loop.behaviour = held_until(release)
    server = (
        builder("origin")
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .with_middleware(_PassThrough)
        .done()
        .subprocess.with_ipc(*queues)
        .done()
        .build()
    )
    with running(server), ThreadPoolExecutor(2) as pool, caplog.at_level(logging.WARNING, "isolated_api.relay"):
        url = f"http://127.0.0.1:{server.port}/upper"
        futures = [pool.submit(_post_ignoring_errors, url, {"text": f"o{i}"}) for i in range(2)]
        main_loop.wait_received(2, 20)
        worker = server.process
        assert worker is not None and worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        assert [f.result(30) for f in futures] == [None, None]
        wait_until(lambda: any("in flight" in r.getMessage() for r in caplog.records), 10, "the log line")
        release.set()
    [line] = [r.getMessage() for r in caplog.records if "in flight" in r.getMessage()]
    assert "2 request(s)" in line and "origin unknown" not in line
    for request in main_loop.received[:2]:
        assert f"{request.id!r} (POST /upper)" in line


def test_subprocess_runtime_sigkill_while_idle_then_restart(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    server = _server(queues)
    server.start_subprocess()
    try:
        assert server.process is not None and server.process.pid is not None
        os.kill(server.process.pid, signal.SIGKILL)
        wait_until(lambda: not server.is_running, 10, "the child's death to be noticed")
        server.start_subprocess()
        response = httpx.post(f"http://127.0.0.1:{server.port}/upper", json={"text": "x"}, timeout=10)
        assert response.json()["text"] == "X"
    finally:
        server.stop()


_MAIN_SCRIPT = textwrap.dedent(
    """
    import json, multiprocessing, sys, threading
    from isolated_api import ServerBuilder
    from tests.helpers import MainLoop, answer_upper, pending_route, upper_route

    def hold_some(request):
        if request.text == "hold":
            threading.Event().wait()
        return answer_upper(request)

    if __name__ == "__main__":
        request_q, response_q = multiprocessing.Queue(), multiprocessing.Queue()
        MainLoop(request_q, response_q, hold_some).start()
        server = (ServerBuilder("orphan").with_host("127.0.0.1").with_port(0)
                  .routes.with_route("/upper", upper_route, methods=["POST"])
                  .with_route("/pending", pending_route).done()
                  .subprocess.with_ipc(request_q, response_q).with_start_method(sys.argv[1]).done().build())
        process = server.start_subprocess()
        print(json.dumps({"child": process.pid, "port": server.port}), flush=True)
        threading.Event().wait()
    """
)


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_subprocess_runtime_child_exits_when_main_process_is_killed(tmp_path: Path, start_method: str) -> None:
    """Steps: a separate main process starts the child, serves one request and holds another;
    SIGKILL the main process. Expect the held request to get 503 (main process gone), the child
    gone and the port refusing connections within 2 s (the child's lifeline sees end-of-file at
    once; it force-exits 0.8 s later if a clean exit stalls)."""
    script = tmp_path / "main.py"
    script.write_text(_MAIN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    main = subprocess.Popen(
        [sys.executable, str(script), start_method], stdout=subprocess.PIPE, cwd=REPO, env=env, text=True
    )
    try:
        assert main.stdout is not None
        info = json.loads(main.stdout.readline())
        child, port = info["child"], info["port"]
        response = httpx.post(f"http://127.0.0.1:{port}/upper", json={"text": "hi"}, timeout=10)
        assert response.json()["text"] == "HI"
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(_post_ignoring_errors, f"http://127.0.0.1:{port}/upper", {"text": "hold"})
            wait_until(lambda: _pending_in(port) == 1, 10, "the held request to be pending")
            main.kill()
            main.wait(10)
            killed_at = time.monotonic()
            assert held.result(10) == 503
        wait_until(lambda: not pid_alive(child), 2.0, "the orphaned child to exit")
        wait_until(lambda: _port_refuses(port), 2.0 - (time.monotonic() - killed_at) + 0.5, "the port to be freed")
    finally:
        if main.poll() is None:
            main.kill()
        main.wait(10)
        if main.stdout is not None:
            main.stdout.close()


def test_subprocess_runtime_fork_accepts_handlers_that_do_not_pickle(
    queues: tuple[Any, Any], main_loop: MainLoop
) -> None:
    """Under fork the child inherits the app recipe: a closure works as a handler there."""
    greeting = "hello from a closure"

    async def closure_route() -> dict[str, str]:
        return {"greeting": greeting}

    server = (
        builder("fork-closure")
        .routes.with_route("/closure", closure_route)
        .done()
        .subprocess.with_ipc(*queues)
        .with_start_method("fork")
        .done()
        .build()
    )
    with running(server) as url:
        assert httpx.get(f"{url}/closure", timeout=10).json() == {"greeting": greeting}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BUSY_WAIT = 0.01
BUSY_REQUESTS = 40


def test_subprocess_runtime_a_reply_busy_wait_reaches_the_worker(queues: tuple[Any, Any], main_loop: MainLoop) -> None:
    """Steps: a server with with_reply_busy_wait(0.01) whose main loop answers each request 20 ms
    after it came (simulated work); 40 requests one after another. Expect every answer right, and
    the worker to have spent at least 0.2 s of CPU on them: after each lone request it checks its
    pipe for the full 10 ms (0.4 s in all if nothing preempts it). Without the option the same 40
    cost it 0.030-0.040 s (three runs with the option set to 0)."""
    server = (
        builder("busy-wait")
        .routes.with_route("/upper", upper_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(*queues)
        .with_reply_busy_wait(BUSY_WAIT)
        .done()
        .build()
    )
    with running(server), httpx.Client(timeout=10) as client:
        url = f"http://127.0.0.1:{server.port}/upper"
        assert client.post(url, json={"text": "warm"}).json()["text"] == "WARM"
        worker = server.process
        assert worker is not None and worker.pid is not None, "a started server has its worker"
        before = _cpu_seconds(worker.pid)
        for i in range(BUSY_REQUESTS):
            assert client.post(url, json={"text": f"b{i}", "delay": 0.02}).json()["text"] == f"B{i}"
        used = _cpu_seconds(worker.pid) - before
    assert used >= 0.2, f"the worker used {used:.3f} s of CPU for {BUSY_REQUESTS} lone requests"
