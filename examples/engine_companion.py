"""The main-process side with the Engine companion: register handlers instead of hand-writing a
``request_q.get() ... response_q.put()`` loop. Sync handlers run in worker threads, async ones on
the engine's loop, generators stream; ``EngineError`` picks the client's status.

    python examples/engine_companion.py [--smoke]   # POST :8000/shout {"text": "hi"}, POST :8000/count {"n": 3}
"""

import json
import multiprocessing
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError
from urllib.request import ProxyHandler, Request, build_opener

from isolated_api import IPC, Engine, EngineError, ServerBuilder


@dataclass
class Shout:
    id: str
    text: str


@dataclass
class Count:
    id: str
    n: int


async def shout_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(Shout(uuid.uuid4().hex, str(body.get("text", ""))))
    return {"text": reply.data}


async def count_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    stream = channel.submit_streaming(Count(uuid.uuid4().hex, int(body.get("n", 3))))
    return {"numbers": [chunk.data async for chunk in stream if not chunk.is_final]}


def shout(request: Shout) -> str:  # runs in a worker thread of the engine
    if not request.text:
        raise EngineError("text must not be empty", 422)
    return request.text.upper()


async def count(request: Count) -> AsyncIterator[int]:  # each item is one chunk; the engine ends the stream
    for i in range(request.n):
        yield i


def post(url: str, body: dict[str, Any]) -> str:
    request = Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with build_opener(ProxyHandler({})).open(request, timeout=10) as response:
            return f"{response.status} {response.read().decode()}"
    except HTTPError as error:
        return f"{error.code} {error.read().decode()}"


if __name__ == "__main__":
    smoke = "--smoke" in sys.argv
    request_q: Any = multiprocessing.Queue()
    response_q: Any = multiprocessing.Queue()
    server = (
        ServerBuilder("engine-companion")
        .with_host("127.0.0.1")
        .with_port(0 if smoke else 8000)
        .routes.with_route("/shout", shout_route, methods=["POST"])
        .with_route("/count", count_route, methods=["POST"])
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .with_cancellation()  # a client that goes away cancels its handler in the engine
        .done()
        .build()
    )
    engine = Engine(request_q, response_q, concurrency=4)
    engine.handle(Shout, shout)
    engine.handle(Count, count)
    with engine:  # start(); stop() on the way out, after the server
        process = server.start_subprocess()
        url = f"http://127.0.0.1:{server.port}"
        print(f"HTTP child {process.pid} serving on {url}", flush=True)
        try:
            if smoke:
                for path, body in (("/shout", {"text": "hello"}), ("/shout", {"text": ""}), ("/count", {"n": 3})):
                    print(f"POST {path} {json.dumps(body)} -> {post(url + path, body)}", flush=True)
            else:
                print("Ctrl-C to stop", flush=True)
                threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop(timeout=5)
    print("stopped", flush=True)
