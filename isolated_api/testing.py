"""Helpers for testing a server built with isolated_api: real queues, a real main loop, real HTTP.

Everything here is public and used by this project's own tests and by every feature slice::

    from isolated_api.testing import MainLoop, loopback_builder, running, spawn_queues

    with spawn_queues() as (request_q, response_q):
        loop = MainLoop(request_q, response_q, answer).start()
        server = loopback_builder("t").routes.with_route("/x", handler).done().subprocess.with_ipc(
            request_q, response_q).done().build()
        with running(server) as url:
            ...                                   # httpx.get(f"{url}/x")
        loop.stop()

Waits take a deadline and a message (``wait_until``), never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import selectors
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from isolated_api.server.builder import ServerBuilder
from isolated_api.server.server import Server

__all__ = [
    "STOP",
    "MainLoop",
    "VirtualClockLoop",
    "drain_queue",
    "loopback_builder",
    "pid_alive",
    "run_virtual",
    "running",
    "serving_direct",
    "spawn_queues",
    "wait_until",
]

# What MainLoop.stop() puts on request_q to end the loop's reader.
STOP = "__isolated_api_testing_stop__"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, message: str = "condition") -> None:
    """Returns as soon as ``condition()`` is true; raises ``AssertionError`` naming ``message``
    after ``timeout`` seconds. Checks often at first, then every 0.1 s."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def pid_alive(pid: int) -> bool:
    """True while the process runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@contextmanager
def spawn_queues() -> Iterator[tuple[Any, Any]]:
    """``(request_q, response_q)``: two ``multiprocessing`` queues of the ``spawn`` context,
    closed afterwards without waiting for their feeder threads."""
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    try:
        yield request_q, response_q
    finally:
        for q in (request_q, response_q):
            q.cancel_join_thread()
            q.close()


def drain_queue(q: Any, idle: float = 0.2) -> list[Any]:
    """Everything on ``q`` until it stays empty for ``idle`` seconds."""
    items = []
    while True:
        try:
            items.append(q.get(timeout=idle))
        except queue.Empty:
            return items


class MainLoop:
    """The main process's side, as a user writes it: a thread reads ``request_q`` and puts
    ``behaviour(request)`` on ``response_q`` (``None``: no reply). Each request is answered in a
    thread of its own, so a slow one doesn't hold up the others. ``received`` lists every request
    read, in order."""

    def __init__(self, request_q: Any, response_q: Any, behaviour: Callable[[Any], Any]) -> None:
        self.request_q = request_q
        self.response_q = response_q
        self.behaviour = behaviour
        self.received: list[Any] = []
        self.stopped = False
        self._thread = threading.Thread(target=self._run, name="isolated-api-test-main-loop", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                request = self.request_q.get()
            except (EOFError, OSError, ValueError):
                return
            if isinstance(request, str) and request == STOP:
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

    def wait_received(self, count: int, timeout: float = 30.0) -> None:
        """Waits until ``count`` requests in all have been read."""
        wait_until(lambda: len(self.received) >= count, timeout, f"{count} requests in the main process")

    def stop(self) -> None:
        self.stopped = True
        self.request_q.put(STOP)
        self._thread.join(5)


def loopback_builder(name: str = "test", timeout: float = 10.0) -> ServerBuilder:
    """A ``ServerBuilder`` on 127.0.0.1 and a free port, with a ``timeout``-second reply deadline."""
    return ServerBuilder(name).with_host("127.0.0.1").with_port(0).with_timeout(timeout)


@contextmanager
def running(server: Server, stop_timeout: float = 5.0) -> Iterator[str]:
    """Subprocess mode: starts the HTTP worker(s), yields the base URL, always stops them."""
    server.start_subprocess()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(timeout=stop_timeout)


@contextmanager
def serving_direct(server: Server) -> Iterator[str]:
    """Direct mode: serves in a thread of this process, yields the base URL, always stops it."""
    thread = threading.Thread(target=server.start, name="isolated-api-test-direct", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.is_running, 10.0, "the direct-mode server to start")
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop(timeout=2.0)
        thread.join(10)


class _VirtualSelector(selectors.SelectSelector):
    """Where the loop would sleep until its next timer, the clock jumps there instead."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready:
            if timeout is None:
                raise RuntimeError("every task waits and no timer is set: something waits forever")
            self._loop.now += timeout
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when every task waits on a timer: timeouts of
    seconds or hours run in microseconds, and exactly."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self.now


def run_virtual(coro: Any) -> None:
    """Runs ``coro`` to completion on a fresh ``VirtualClockLoop``."""
    loop = VirtualClockLoop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()
