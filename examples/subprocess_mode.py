"""Subprocess mode: HTTP runs in a child process logging to its own file ($HTTP_CHILD_LOG, default
http-child.log); this process keeps the work: it reads ``request_q`` and answers on ``response_q``.

    python examples/subprocess_mode.py [--smoke]   # POST :8000/shout {"text": "hi"}; --smoke: port 0, one POST, exit
"""

import json
import multiprocessing
import os
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.request import ProxyHandler, Request, build_opener

from isolated_api import IPC, ServerBuilder


@dataclass
class Shout:
    id: str
    text: str


@dataclass
class Reply:
    id: str
    text: str


async def shout(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(Shout(id=uuid.uuid4().hex, text=str(body.get("text", ""))))
    return {"text": reply.text}


def post_once(url: str, request_q: Any) -> None:
    try:
        request = Request(url, json.dumps({"text": "hello"}).encode(), {"content-type": "application/json"})
        with build_opener(ProxyHandler({})).open(request, timeout=10) as response:
            print(f"POST /shout -> {response.status} {response.read().decode()}", flush=True)
    finally:
        request_q.put(None)  # ends the main loop


if __name__ == "__main__":
    smoke, log_file = "--smoke" in sys.argv, os.environ.get("HTTP_CHILD_LOG", "http-child.log")
    request_q: Any = multiprocessing.Queue()  # requests arrive here (this process reads it)
    response_q: Any = multiprocessing.Queue()  # replies go here, with the request's id
    server = (
        ServerBuilder("shout")
        .with_host("127.0.0.1")
        .with_port(0 if smoke else 8000)
        .routes.with_route("/shout", shout, methods=["POST"])
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .with_log_file(log_file)
        .done()
        .uvicorn.with_log_level("info")
        .done()
        .build()
    )
    process = server.start_subprocess()
    print(f"HTTP child {process.pid} serving on http://127.0.0.1:{server.port}; its log: {log_file}", flush=True)
    if smoke:
        threading.Thread(target=post_once, args=(f"http://127.0.0.1:{server.port}/shout", request_q)).start()
    try:
        while (req := request_q.get()) is not None:
            response_q.put(Reply(id=req.id, text=req.text.upper()))  # the heavy work stays in this process
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(timeout=5)
    print("stopped", flush=True)
