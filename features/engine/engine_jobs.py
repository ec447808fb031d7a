"""Request types and handlers the slice serves. The request classes are
module-level so the HTTP child can unpickle them; handlers run in the main process only.
``Probe`` holds handlers that block until released and record what they saw, for tests of
concurrency, cancellation and stop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Generator, Hashable, Iterator
from dataclasses import dataclass

from isolated_api import EngineError, RequestContext


@dataclass
class Upper:
    id: Hashable
    text: str


@dataclass
class Reverse:
    id: Hashable
    text: str


@dataclass
class Fail:
    id: Hashable
    message: str
    status: int | None = None  # None: a plain ValueError (500)


@dataclass
class Count:
    id: Hashable
    n: int


@dataclass
class CountAsync:
    id: Hashable
    n: int


@dataclass
class Hold:
    """Work that takes as long as the test wants: served by a ``Probe``'s handlers."""

    id: Hashable
    tag: str = ""


def upper(request: Upper) -> str:
    return request.text.upper()


async def reverse(request: Reverse) -> str:
    await asyncio.sleep(0)
    return request.text[::-1]


def fail(request: Fail) -> None:
    if request.status is None:
        raise ValueError(request.message)
    raise EngineError(request.message, request.status)


def count(request: Count) -> Generator[int, None, str]:
    yield from range(request.n)
    return f"counted {request.n}"  # becomes the final chunk's data


async def count_async(request: CountAsync) -> AsyncIterator[int]:
    for i in range(request.n):
        await asyncio.sleep(0)
        yield i


class Probe:
    """Counts handlers running at once and records cancellations; its handlers hold each request
    until ``release`` is set (or the request is cancelled)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.started: list[Hashable] = []
        self.finished: list[Hashable] = []
        self.cancelled: list[tuple[Hashable, str | None]] = []

    def _enter(self, request_id: Hashable) -> None:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.started.append(request_id)

    def _leave(self, request_id: Hashable, cancelled: bool, reason: str | None = None) -> None:
        with self._lock:
            self.running -= 1
            if cancelled:
                self.cancelled.append((request_id, reason))
            else:
                self.finished.append(request_id)

    def hold_sync(self, request: Hold, ctx: RequestContext) -> str:
        """A sync handler: waits for ``release`` in small steps, watching ``ctx.cancelled``."""
        self._enter(request.id)
        while not self.release.wait(0.01):  # simulated work, interruptible
            if ctx.cancelled:
                self._leave(request.id, True, ctx.cancel_reason)
                return "cancelled work would be dropped"
        self._leave(request.id, False)
        return f"held {request.tag}"

    async def hold_async(self, request: Hold, ctx: RequestContext) -> str:
        self._enter(request.id)
        try:
            await asyncio.to_thread(self.release.wait, 60)
        except asyncio.CancelledError:
            self._leave(request.id, True, ctx.cancel_reason)
            raise
        self._leave(request.id, False)
        return f"held {request.tag}"

    def hold_stream(self, request: Hold, ctx: RequestContext) -> Iterator[str]:
        """A sync generator: one chunk, then holds; stops when cancelled."""
        self._enter(request.id)
        try:
            yield "first"
            while not self.release.wait(0.01):
                if ctx.cancelled:
                    break
            yield "second"
        finally:
            self._leave(request.id, ctx.cancelled, ctx.cancel_reason)

    async def hold_stream_async(self, request: Hold) -> AsyncIterator[str]:
        self._enter(request.id)
        cancelled = False
        try:
            yield "first"
            await asyncio.to_thread(self.release.wait, 60)
            yield "second"
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self._leave(request.id, cancelled)
