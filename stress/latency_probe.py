"""Timestamps at each stage of one request's way through the IPC path, for
``stress/test_latency_stages.py``.

Importing this module wraps the functions that mark a stage so that each records
``time.perf_counter_ns()`` (CLOCK_MONOTONIC on Linux: one clock for every process) as it starts
and as it returns, in ``STAMPS`` of the process it runs in. The HTTP child imports it because
the probe route lives here; the test imports it in the main process. It is measurement code for
one connection at a time (each stage keeps only its latest stamp): never import it in a server
that matters.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from features.ipc import _framing, channel, pipe_endpoint, pipe_link, queue_access, relay
from isolated_api import new_request_id

# The latest stamp of each stage, per thread: (stage + ">" or "<", thread id) -> ns.
STAMPS: dict[tuple[str, int], int] = {}
# Per request id, the stamps that other traffic on the same thread (health probes, metrics
# reports, cancellations) could overwrite before the request is done: copied as the request
# meets them.
BY_ID: dict[Any, dict[str, int]] = {}


def latest(stage: str) -> int:
    """This thread's latest stamp for ``stage`` ("name>" at its start, "name<" at its return)."""
    return STAMPS[(stage, threading.get_ident())]


def _stamped(owner: Any, name: str, key: str, after: Callable[..., None] | None = None) -> None:
    original: Callable[..., Any] = getattr(owner, name)
    if getattr(original, "_stage", None):
        return  # imported twice (as a module and by name): wrapped once

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        thread = threading.get_ident()
        STAMPS[(key + ">", thread)] = time.perf_counter_ns()
        try:
            return original(*args, **kwargs)
        finally:
            STAMPS[(key + "<", thread)] = time.perf_counter_ns()
            if after is not None:
                after(*args, **kwargs)

    wrapper._stage = key  # type: ignore[attr-defined]
    setattr(owner, name, wrapper)


def _sent(link: Any, request_id: Any, *args: Any, **kwargs: Any) -> None:
    BY_ID.setdefault(request_id, {}).update({stage: latest(stage) for stage in ("child.send>", "child.send<")})


def _forwarded(relay_: Any, endpoint: Any, request_id: Any, **kwargs: Any) -> None:
    # The frame that carried this request is the one the reader decoded last.
    BY_ID[request_id] = {stage: latest(stage) for stage in ("feed>", "main.put>", "main.put<")}


def _woken(channel_: Any, replies: list[Any]) -> None:
    for reply in replies:
        BY_ID.setdefault(reply.id, {})["child.read>"] = latest("child.read>")


# Child: encode and write the request; read and decode the reply; hand it to its waiter.
_stamped(pipe_link.PipeLink, "send", "child.send", _sent)
_stamped(pipe_link._Downlink, "data_received", "child.read")
_stamped(channel.IPCChannel, "on_replies", "child.wake", _woken)
# Main process: the relay's reader decodes a frame and forwards it onto request_q; the reply,
# handed over by a ReplyBatcher, is routed, encoded and written to the child's pipe.
_stamped(_framing.FrameDecoder, "feed", "feed")
_stamped(queue_access.RequestWriter, "put", "main.put")
_stamped(relay.Relay, "forward", "main.forward", _forwarded)
_stamped(relay.Relay, "route_local", "main.route")
_stamped(pipe_endpoint.PipeEndpoint, "_write", "main.write")


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
