"""Engines on other machines, end to end: the GPU host's side and the API host's routes.

GPU host (its main process; here ``engine_main``, run in a process of its own per engine)::

    host = EngineHost(request_q, response_q, bind="tcp://0.0.0.0:5700", codec=CODEC)
    host.start()                     # API hosts dial host.address
    serve_jobs(request_q, response_q, ...)   # the usual loop: get a request, put its replies

API host::

    ServerBuilder("api").routes.with_route("/generate", generate, methods=["POST"]).done()
        .engines.with_engines("tcp://gpu-1:5700", "tcp://gpu-2:5700").with_codec(CODEC).done()

The handlers are the same as for one machine (``channel.submit``, ``channel.submit_streaming``).
``MsgspecCodec`` is what crosses the network: an engine decodes only the declared types (pickle
would let whoever reaches the port run code). Module-level, so the HTTP workers import it under
``spawn``. ``Job`` carries a few knobs of the stand-in model (pacing, a hang) that the tests use.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
import time
import uuid
from typing import Any

import msgspec
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from isolated_api import IPC, CancelRequest, EngineHost, Heartbeat, MsgspecCodec, sse_response


class Job(msgspec.Struct, tag=True):
    id: str
    prompt: str
    # 0: one Result; n: n Tokens, the last with is_final=True.
    tokens: int = 0
    # Seconds of "model time" per reply; the engine works one job at a time, like a GPU.
    delay: float = 0.0
    # Seconds this engine's whole Python stays stuck, holding the GIL (a C call that never
    # releases it): its I/O thread can't answer pings, though its TCP connection stays up.
    hang: float = 0.0


class Token(msgspec.Struct, tag=True):
    id: str
    index: int
    text: str
    engine: str
    is_final: bool = False


class Result(msgspec.Struct, tag=True):
    id: str
    text: str
    engine: str


CODEC = MsgspecCodec(Job, Token, Result)


class JobBody(BaseModel):
    prompt: str = ""
    tokens: int = Field(0, ge=0, le=10_000)
    delay: float = Field(0.0, ge=0, le=5)
    hang: float = Field(0.0, ge=0, le=30)


def _job(body: JobBody) -> Job:
    return Job(uuid.uuid4().hex, body.prompt, body.tokens, body.delay, body.hang)


async def generate(body: JobBody, channel: IPC) -> dict[str, Any]:
    """POST /generate -> ``{"text", "engine"}``: which engine answered shows in the reply."""
    result = await channel.submit(_job(body))
    return {"text": result.text, "engine": result.engine}


async def stream(body: JobBody, request: Request, channel: IPC) -> Response:
    """POST /stream -> ``text/event-stream`` of ``Token`` frames, in order."""
    return await sse_response(channel.submit_streaming(_job(body)), _token_json, request=request)


def _token_json(token: Any) -> str:
    # msgspec Structs are not what FastAPI's JSON encoder knows; msgspec writes them itself.
    return msgspec.json.encode(token).decode()


# -- the GPU host ------------------------------------------------------------------------------


def serve_jobs(request_q: Any, response_q: Any, name: str, events: Any = None, pace: float = 1.0) -> None:
    """The engine's main loop, as a user writes it: one job at a time. ``events`` (a queue, may
    be None) hears ``("job", id, prompt)`` for each job read and ``("cancel", id, reason)`` for
    each ``CancelRequest``, so a test can see what reached this engine. ``pace`` scales each
    job's delay (3.0: a GPU three times slower). Ends on ``None``."""
    while True:
        item = request_q.get()
        if item is None:
            return
        message = CODEC.decode(item)
        if isinstance(message, CancelRequest):
            if events is not None:
                events.put(("cancel", message.id, message.reason))
            continue
        if not isinstance(message, Job):
            continue
        if events is not None:
            events.put(("job", message.id, message.prompt))
        if message.hang:
            # Holds the GIL for the whole call (PyDLL does not release it), as a stuck C
            # extension would.
            ctypes.PyDLL(None).usleep(int(message.hang * 1_000_000))
        if message.tokens:
            for index in range(message.tokens):
                if message.delay:
                    time.sleep(message.delay * pace)
                final = index == message.tokens - 1
                response_q.put(Token(message.id, index, f"{message.prompt}{index} ", name, final))
        else:
            if message.delay:
                time.sleep(message.delay * pace)
            response_q.put(Result(message.id, message.prompt.upper(), name))


def engine_main(
    bind: str,
    name: str,
    started: Any,
    stop: Any,
    events: Any = None,
    max_pending: int | None = None,
    cancel_notices: bool = False,
    curve_secret_key: str | None = None,
    beat: float | None = None,
    pace: float = 1.0,
) -> None:
    """A GPU host's main process: an ``EngineHost`` over two queues and ``serve_jobs`` reading
    them. Puts ``(address, pid)`` on ``started`` once API hosts can dial it; ends when ``stop`` (an
    Event) is set. The queues can be plain ``queue.Queue``: the loop and the host share this
    process (a ``multiprocessing.Queue`` works too, when the loop's queues come from elsewhere)."""
    request_q: queue.Queue[Any] = queue.Queue()
    response_q: queue.Queue[Any] = queue.Queue()
    host = EngineHost(
        request_q,
        response_q,
        bind=bind,
        codec=CODEC,
        max_pending=max_pending,
        cancel_notices=cancel_notices,
        curve_secret_key=curve_secret_key,
    )
    host.start()
    started.put((host.address, os.getpid()))

    def wait_for_stop() -> None:
        stop.wait()
        request_q.put(None)

    threading.Thread(target=wait_for_stop, daemon=True).start()
    if beat is not None:

        def beat_forever() -> None:
            while not stop.wait(beat):
                response_q.put(Heartbeat())

        threading.Thread(target=beat_forever, daemon=True).start()
    try:
        serve_jobs(request_q, response_q, name, events, pace)
    finally:
        host.stop()
