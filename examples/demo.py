"""The README demo: this process does the "work" (word count and upper-case, with an optional fake
delay); the HTTP API runs in a child process and hands each request over a queue.

    python examples/demo.py [--port 8000]      # serves until Ctrl-C, then stops cleanly
    python examples/demo.py --port 0 --smoke   # makes one request itself, prints it, exits 0
"""

import argparse
import json
import multiprocessing
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.request import ProxyHandler, Request, build_opener

from pydantic import BaseModel, Field

from isolated_api import IPC, ServerBuilder


class WorkIn(BaseModel):
    text: str
    delay: float = Field(default=0.0, ge=0, le=10, description="seconds the main process pretends to work")


@dataclass
class WorkRequest:
    id: str
    text: str
    delay: float


@dataclass
class WorkResult:
    id: str
    words: int
    upper: str
    main_pid: int


async def work(body: WorkIn, channel: IPC) -> dict[str, Any]:
    result = await channel.submit(WorkRequest(uuid.uuid4().hex, body.text, body.delay))
    return {"words": result.words, "upper": result.upper, "main_pid": result.main_pid}


def do_work(request: WorkRequest, response_q: Any) -> None:
    time.sleep(request.delay)
    response_q.put(WorkResult(request.id, len(request.text.split()), request.text.upper(), os.getpid()))


def smoke(url: str, request_q: Any) -> None:
    try:
        body = json.dumps({"text": "hello isolated world"}).encode()
        request = Request(url, body, {"content-type": "application/json"})
        with build_opener(ProxyHandler({})).open(request, timeout=10) as response:
            print(f"POST /work -> {response.status} {response.read().decode()}", flush=True)
    finally:
        request_q.put(None)  # ends the main loop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--smoke", action="store_true", help="make one request, print it and exit")
    args = parser.parse_args()
    request_q: Any = multiprocessing.Queue()  # requests arrive here (this process reads it)
    response_q: Any = multiprocessing.Queue()  # replies go here, with the request's id
    server = (
        ServerBuilder("demo")
        .with_host("127.0.0.1")
        .with_port(args.port)
        .with_title("isolated_api demo")
        .routes.with_route("/work", work, methods=["POST"])
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .done()
        .build()
    )
    process = server.start_subprocess()
    url = f"http://127.0.0.1:{server.port}"
    print(f"HTTP child {process.pid} serving {url} (docs: {url}/docs); main process {os.getpid()}")
    body = '{"text": "hello world", "delay": 0.5}'
    print(f"try:  curl -s -X POST {url}/work -H 'content-type: application/json' -d '{body}'")
    print("Ctrl-C to stop", flush=True)
    if args.smoke:
        threading.Thread(target=smoke, args=(f"{url}/work", request_q)).start()
    try:
        while (request := request_q.get()) is not None:
            # One thread per request, so a slow one does not hold up the others.
            threading.Thread(target=do_work, args=(request, response_q), daemon=True).start()
    except KeyboardInterrupt:
        print("\nCtrl-C: stopping", flush=True)
    finally:
        server.stop(timeout=5)
    print("stopped", flush=True)
