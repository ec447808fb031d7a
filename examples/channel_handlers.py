"""Handlers reach the main process through ``request.app.state.ipc_channel`` or the ``IPC``
dependency. The main process fails a request with ``ErrorReply(id, message, status_code)``: the
client gets that status and ``{"detail": message}``.

    python examples/channel_handlers.py [--smoke]   # :8000 until Ctrl-C; --smoke: port 0, 3 POSTs, exit
"""

import json
import multiprocessing
import sys
import threading
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError
from urllib.request import ProxyHandler, Request, build_opener

from fastapi import Request as HTTPRequest
from pydantic import BaseModel

from isolated_api import IPC, ErrorReply, ServerBuilder


@dataclass
class Message:  # requests and replies: any picklable object with an .id
    id: str
    text: str
    refuse_with: int | None = None


class Item(BaseModel):
    text: str
    refuse_with: int | None = None


async def via_state(request: HTTPRequest) -> dict[str, str]:
    body = await request.json()
    reply = await request.app.state.ipc_channel.submit(Message(uuid.uuid4().hex, str(body["text"])))
    return {"text": reply.text}


async def via_dependency(body: Item, channel: IPC) -> dict[str, str]:
    reply = await channel.submit(Message(uuid.uuid4().hex, body.text, body.refuse_with))
    return {"text": reply.text}


def smoke(base: str, request_q: Any) -> None:
    try:
        for path, body in [
            ("state", {"text": "abc"}),
            ("dependency", {"text": "xyz"}),
            ("dependency", {"text": "nope", "refuse_with": 409}),
        ]:
            request = Request(f"{base}/{path}", json.dumps(body).encode(), {"content-type": "application/json"})
            try:
                with build_opener(ProxyHandler({})).open(request, timeout=10) as response:
                    status, text = response.status, response.read().decode()
            except HTTPError as error:
                status, text = error.code, error.read().decode()
            print(f"POST /{path} {json.dumps(body)} -> {status} {text}", flush=True)
    finally:
        request_q.put(None)  # ends the main loop


if __name__ == "__main__":
    request_q: Any = multiprocessing.Queue()  # requests arrive here (this process reads it)
    response_q: Any = multiprocessing.Queue()  # replies go here, with the request's id
    server = (
        ServerBuilder("channel")
        .with_host("127.0.0.1")
        .with_port(0 if "--smoke" in sys.argv else 8000)
        .routes.with_route("/state", via_state, methods=["POST"])
        .with_route("/dependency", via_dependency, methods=["POST"])
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .done()
        .build()
    )
    server.start_subprocess()
    print(f"serving on http://127.0.0.1:{server.port}", flush=True)
    if "--smoke" in sys.argv:
        threading.Thread(target=smoke, args=(f"http://127.0.0.1:{server.port}", request_q)).start()
    try:
        while (req := request_q.get()) is not None:
            if req.refuse_with is not None:
                response_q.put(ErrorReply(req.id, f"refusing {req.text!r}", req.refuse_with))
            else:
                response_q.put(Message(req.id, req.text[::-1]))
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(timeout=5)
