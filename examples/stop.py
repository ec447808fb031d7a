"""Graceful stop: ``server.stop(timeout)`` answers new requests 503 while in-flight ones finish
(up to ``timeout`` s), then ends the child (SIGTERM, then SIGKILL). A second ``stop()`` does nothing.
The script plays the whole scenario and exits; ``--smoke`` only switches to a free port.

    python examples/stop.py [--smoke]
"""

import multiprocessing
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import ProxyHandler, Request, build_opener

from isolated_api import IPC, ServerBuilder


@dataclass
class Job:
    id: str
    text: str = ""


async def work(channel: IPC) -> dict[str, str]:
    return {"text": (await channel.submit(Job(uuid.uuid4().hex))).text}


async def ping() -> dict[str, bool]:
    return {"pong": True}


def call(url: str, method: str = "GET") -> str:
    try:
        with build_opener(ProxyHandler({})).open(Request(url, method=method), timeout=10) as response:
            return f"{response.status} {response.read().decode()}"
    except HTTPError as error:
        return f"{error.code} {error.read().decode()}"
    except URLError as error:
        return f"refused ({error.reason})"


if __name__ == "__main__":
    request_q: Any = multiprocessing.Queue()  # requests arrive here (this process reads it)
    response_q: Any = multiprocessing.Queue()  # replies go here, with the request's id
    server = (
        ServerBuilder("stop")
        .with_host("127.0.0.1")
        .with_port(0 if "--smoke" in sys.argv else 8000)
        .routes.with_route("/work", work, methods=["POST"])
        .with_route("/ping", ping)
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .done()
        .build()
    )
    server.start_subprocess()
    base = f"http://127.0.0.1:{server.port}"
    print(f"before stop: GET /ping -> {call(base + '/ping')}", flush=True)
    in_flight: list[str] = []
    client = threading.Thread(target=lambda: in_flight.append(call(base + "/work", "POST")))
    client.start()
    held = request_q.get(timeout=10)  # the main process holds this request until the drain has begun
    stopper = threading.Thread(target=server.stop, kwargs={"timeout": 10})
    stopper.start()
    deadline, during = time.monotonic() + 10, ""
    while not during.startswith("503") and time.monotonic() < deadline:
        during = call(base + "/ping")
    print(f"during stop: GET /ping -> {during}", flush=True)
    response_q.put(Job(held.id, "finished during the drain"))
    client.join(10)
    print(f"in flight: POST /work -> {in_flight[0] if in_flight else 'no answer'}", flush=True)
    stopper.join(20)
    print(f"after stop: is_running={server.is_running}, GET /ping -> {call(base + '/ping')}", flush=True)
    server.stop(timeout=1)
    print("second stop(): no-op", flush=True)
