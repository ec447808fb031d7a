"""The library's own test support (each slice carries its own): message types, module-level route
handlers (the child imports them under ``spawn``) and a main loop that answers them; the generic
helpers come from ``isolated_api.testing``."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel

from isolated_api import IPC, ErrorReply, ServerBuilder, testing
from isolated_api.shared.framing import FrameDecoder
from isolated_api.testing import loopback_builder


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


class MainLoop(testing.MainLoop):
    """``isolated_api.testing.MainLoop`` answering with ``answer_upper`` unless told otherwise."""

    def __init__(self, request_q: Any, response_q: Any, behaviour: Callable[[Any], Any] = answer_upper) -> None:
        super().__init__(request_q, response_q, behaviour)


def wait_received(main_loop: MainLoop, count: int, timeout: float = 30.0) -> None:
    """Waits until the main loop has received ``count`` requests in all."""
    main_loop.wait_received(count, timeout)


def builder(name: str = "test") -> ServerBuilder:
    return loopback_builder(name)


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


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """In a coroutine: returns once ``condition()`` holds (checked every 5 ms of the loop's clock,
    so the loop runs meanwhile); fails naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)  # a bounded polling loop's pause, not the wait itself


def decode_cut(decoder: FrameDecoder, stream: bytes, cuts: list[int], direct: bool) -> list[bytes]:
    """The bodies ``decoder`` hands on from ``stream`` given in pieces of the ``cuts``' sizes (then
    the rest): fed, or, with ``direct``, written straight into ``unfilled()`` where it asks."""
    out: list[bytes] = []
    position = 0
    steps = iter(cuts)
    while position < len(stream):
        step = next(steps, len(stream))
        unfilled = decoder.unfilled()
        if direct and unfilled is not None:
            count = min(step, len(unfilled), len(stream) - position)
            unfilled[:count] = stream[position : position + count]
            got = decoder.filled(count)
        else:
            count = min(step, len(stream) - position)
            got = decoder.feed(stream[position : position + count])
        position += count
        out += [bytes(body) for _, body in got]
    return out
