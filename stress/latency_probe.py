"""Timestamps at each stage of one request's way through the IPC path, for
``stress/test_latency_stages.py``.

``install()`` wraps the functions that mark a stage so that each records
``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux: one clock for every process) as it starts
and as it returns, in ``STAMPS`` of the process it runs in, until the returned function undoes
it. The probe server's child installs it for its life (``probe_lifespan``), the test in the main
process for the test's length. Measurement code for one connection at a time (each stage keeps
only its latest stamp per thread), never for a server that matters.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from isolated_api import new_request_id
from isolated_api.main import pipe_endpoint, queue_access, relay
from isolated_api.shared import framing
from isolated_api.worker import channel, pipe_link

# The latest stamp of each stage, per thread: (stage + ">" or "<", thread id) -> ns.
STAMPS: dict[tuple[str, int], int] = {}
# Per request id, the stamps that other traffic on the same thread (health probes, metrics
# reports, cancellations) could overwrite before the request is done: copied as the request
# meets them.
BY_ID: dict[Any, dict[str, int]] = {}


def latest(stage: str) -> int:
    """This thread's latest stamp for ``stage`` ("name>" at its start, "name<" at its return)."""
    return STAMPS[(stage, threading.get_ident())]


def _stamped(owner: Any, name: str, key: str, after: Callable[..., None] | None) -> Callable[[], None]:
    """Wraps ``owner.name``; returns what undoes it."""
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        thread = threading.get_ident()
        STAMPS[(key + ">", thread)] = time.perf_counter_ns()
        try:
            result = original(*args, **kwargs)
        finally:
            STAMPS[(key + "<", thread)] = time.perf_counter_ns()
        if after is not None:  # only for a call that returned: a failed one marks no stage
            after(*args, **kwargs)
        return result

    setattr(owner, name, wrapper)
    return lambda: setattr(owner, name, original)


def _sent(link: Any, request_id: Any, *args: Any, **kwargs: Any) -> None:
    BY_ID.setdefault(request_id, {}).update({stage: latest(stage) for stage in ("child.send>", "child.send<")})


def _forwarded(relay_: Any, endpoint: Any, request_id: Any, **kwargs: Any) -> None:
    # The frame that carried this request is the one the reader decoded last.
    BY_ID[request_id] = {stage: latest(stage) for stage in ("feed>", "main.put>", "main.put<")}


def _woken(channel_: Any, replies: list[Any]) -> None:
    # The pipe's data_received decodes its bytes first thing (uvloop holds that bound method
    # from before install(), so the decoder marks the read).
    for reply in replies:
        BY_ID.setdefault(reply.id, {})["child.read>"] = latest("feed>")


_POINTS: tuple[tuple[Any, str, str, Callable[..., None] | None], ...] = (
    # Child: encode and write the request; read and decode the reply; hand it to its waiter.
    (pipe_link.PipeLink, "send", "child.send", _sent),
    (channel.IPCChannel, "on_replies", "child.wake", _woken),
    # Both: a frame decoder at work marks a read.
    (framing.FrameDecoder, "feed", "feed", None),
    # Main process: the relay's reader decodes a frame and forwards it onto request_q; the
    # reply, handed over by a ReplyBatcher, is routed, encoded and written to the child's pipe.
    (queue_access.RequestWriter, "put", "main.put", None),
    (relay.Relay, "forward", "main.forward", _forwarded),
    (relay.Relay, "route_local", "main.route", None),
    (pipe_endpoint.PipeEndpoint, "deliver", "main.write", None),
)


def install() -> Callable[[], None]:
    """Stamps every stage from now on; returns the function that stops it."""
    undo = [_stamped(owner, name, key, after) for owner, name, key, after in _POINTS]

    def uninstall() -> None:
        for step in reversed(undo):
            step()
        STAMPS.clear()
        BY_ID.clear()

    return uninstall


@asynccontextmanager
async def probe_lifespan(app: Any) -> AsyncIterator[None]:
    """The probe server's lifespan: its child stamps every stage while it serves."""
    uninstall = install()
    try:
        yield
    finally:
        uninstall()


@dataclass
class Probe:
    id: str


@dataclass
class ProbeReply:
    id: str


async def probe_route(request: Request) -> dict[str, Any]:
    """Submits one request and returns the child's stamps for it."""
    ipc_channel: channel.IPCChannel = request.app.state.ipc_channel
    request_id = new_request_id()
    submitted = time.perf_counter_ns()
    await ipc_channel.submit(Probe(request_id))
    resumed = time.perf_counter_ns()
    return {"id": request_id, "submit": submitted, "resumed": resumed, **BY_ID.pop(request_id)}
