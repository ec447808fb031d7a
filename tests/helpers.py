"""Shared test support: message types, module-level route handlers (the child imports them under
``spawn``), a main-process loop that answers ``request_q``, and condition waits with deadlines."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel

from isolated_api import IPC, ErrorReply, Server, ServerBuilder


@dataclass
class Work:
    id: str
    text: str = ""
    delay: float = 0.0
    fail_status: int | None = None


@dataclass
class Done:
    id: str
    text: str
    pid: int = field(default_factory=os.getpid)


def new_id() -> str:
    return uuid.uuid4().hex


async def upper_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    """POST {"text", "delay"?, "fail_status"?} -> the main process upper-cases the text."""
    reply = await channel.submit(
        Work(new_id(), str(body.get("text", "")), float(body.get("delay", 0.0)), body.get("fail_status"))
    )
    return {"text": reply.text, "main_pid": reply.pid}


async def ping_route() -> dict[str, Any]:
    """Answers without touching the main process."""
    return {"pong": True, "pid": os.getpid()}


async def pending_route(channel: IPC) -> dict[str, int]:
    return {"pending": channel.pending_count, "dropped": channel.dropped_count, "rejected": channel.rejected_count}


def answer_upper(request: Work) -> Any:
    """Default main-process behaviour: honour ``delay`` and ``fail_status``, else upper-case."""
    if request.delay:
        time.sleep(request.delay)
    if request.fail_status is not None:
        return ErrorReply(request.id, f"refused {request.text!r}", request.fail_status)
    return Done(request.id, request.text.upper())


def held_until(release: threading.Event, then: Callable[[Any], Any] = answer_upper) -> Callable[[Any], Any]:
    """A behaviour that holds each request until ``release`` is set: deterministic "slow work"."""

    def behaviour(request: Any) -> Any:
        release.wait(60)
        return then(request)

    return behaviour


class MainLoop:
    """The user's side: a thread reading ``request_q`` and putting ``behaviour(request)`` on
    ``response_q`` (``None`` means: don't answer). Each request is answered in its own thread so
    slow requests don't serialise."""

    def __init__(self, request_q: Any, response_q: Any, behaviour: Callable[[Any], Any] = answer_upper) -> None:
        self.request_q = request_q
        self.response_q = response_q
        self.behaviour = behaviour
        self.received: list[Any] = []
        self.stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MainLoop:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                request = self.request_q.get()
            except (EOFError, OSError, ValueError):
                return
            if isinstance(request, str) and request == "__stop__":
                return
            self.received.append(request)
            threading.Thread(target=self._answer, args=(request,), daemon=True).start()

    def _answer(self, request: Any) -> None:
        reply = self.behaviour(request)
        if reply is None or self.stopped:
            return
        try:
            self.response_q.put(reply)
        except (ValueError, OSError):  # the test finished and closed its queues meanwhile
            pass

    def stop(self) -> None:
        self.stopped = True
        self.request_q.put("__stop__")
        self._thread.join(5)


def wait_received(main_loop: MainLoop, count: int, timeout: float = 30.0) -> None:
    """Waits until the main loop has received ``count`` requests in all."""
    wait_until(lambda: len(main_loop.received) >= count, timeout, f"{count} requests in the main process")


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def builder(name: str = "test") -> ServerBuilder:
    return ServerBuilder(name).with_host("127.0.0.1").with_port(0).with_timeout(10.0)


@contextmanager
def running(server: Server) -> Iterator[str]:
    """Starts the child, yields its base URL, always stops it."""
    server.start_subprocess()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(timeout=5.0)


@contextmanager
def serving_direct(server: Server) -> Iterator[str]:
    thread = threading.Thread(target=server.start, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.is_running, 10.0, "direct-mode server to start")
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(timeout=2.0)
        thread.join(10)


def drain_queue(q: Any) -> list[Any]:
    items = []
    while True:
        try:
            items.append(q.get(timeout=0.2))
        except queue.Empty:
            return items


async def gather_posts(url: str, bodies: list[dict[str, Any]], timeout: float = 30.0) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies) + 1)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return list(await asyncio.gather(*(client.post(url, json=b) for b in bodies)))


async def block_loop_route() -> dict[str, bool]:
    """Misbehaves on purpose: ignores SIGTERM and blocks the child's event loop."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)  # noqa: ASYNC251 - the point is to block the loop
    return {"never": True}


FAIL_MARKER_ENV = "ISOLATED_API_TEST_FAIL_MARKER"


@asynccontextmanager
async def fail_if_marked(app: Any) -> AsyncIterator[None]:
    """A lifespan that fails start-up while the file named by $ISOLATED_API_TEST_FAIL_MARKER exists."""
    marker = os.environ.get(FAIL_MARKER_ENV)
    if marker and os.path.exists(marker):  # noqa: ASYNC240 - one stat at start-up
        raise RuntimeError("start-up refused by the test marker")
    yield


class CountBody(BaseModel):
    n: int


async def count_route(body: CountBody) -> dict[str, int]:
    """A typed body: validation errors are the framework's 422."""
    return {"n": body.n}
