"""One replica of the whole server, as a deployment runs it: its own main process (this script)
with the README's loop, and an HTTP worker child. tests/deploy/test_rolling_restart_nginx.py
starts two of these behind nginx and restarts them one after the other with SIGTERM.

    python tests/deploy/replica_app.py PORT    # GET/POST /v1/echo on 127.0.0.1:PORT

Every answer names the replica (its port) and its main process's pid, so the test can tell which
replica, and which run of it, served each request. Nothing here handles SIGTERM: the library's own
graceful stop is what is under test.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from dataclasses import dataclass
from typing import Any

from isolated_api import IPC, ServerBuilder, new_request_id


@dataclass
class Echo:
    id: str
    payload: Any


@dataclass
class Echoed:
    id: str
    payload: Any
    replica: int
    main_pid: int


def _answer(reply: Echoed) -> dict[str, Any]:
    return {"payload": reply.payload, "replica": reply.replica, "main_pid": reply.main_pid}


async def echo_get(channel: IPC) -> dict[str, Any]:
    return _answer(await channel.submit(Echo(new_request_id(), None)))


async def echo_post(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    # The body makes the round trip through the main process, so the test can check that each
    # client got its own answer and not a neighbour's.
    return _answer(await channel.submit(Echo(new_request_id(), body.get("payload"))))


if __name__ == "__main__":
    port = int(sys.argv[1])
    # The start line and "SIGTERM: stopping gracefully" land in this process's stderr, which the
    # test keeps in a file: the evidence if a roll goes wrong.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    request_q: Any = multiprocessing.Queue()
    response_q: Any = multiprocessing.Queue()
    server = (
        ServerBuilder(f"replica-{port}")
        .with_host("127.0.0.1")
        .with_port(port)
        .routes.with_route("/v1/echo", echo_get, methods=["GET"])
        .with_route("/v1/echo", echo_post, methods=["POST"])
        .done()
        .subprocess.with_ipc(request_q, response_q)
        .done()
        .build()
    )
    server.start_subprocess()
    main_pid = os.getpid()
    try:
        while (job := request_q.get()) is not None:
            response_q.put(Echoed(job.id, job.payload, port, main_pid))
    except KeyboardInterrupt:  # how the library ends this loop after SIGTERM's graceful stop
        pass
    finally:
        server.stop(timeout=5)
    print("stopped", flush=True)
