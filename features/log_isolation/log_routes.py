"""Module-level pieces for the log-isolation tests (the child is started with ``spawn`` and imports
them by name): a route that writes through every channel a process has, a lifespan that fails,
and the main process of the terminal tests.

With ``.subprocess.with_log_file(path)`` all of the HTTP child's output (logging, uvicorn,
``print``, fds 1 and 2, native code) goes to ``path``; ``serve_and_call`` below is such a main
process."""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from isolated_api import ServerBuilder

# Each channel writes "<marker>-<channel>", so a test can tell which one went astray.
CHANNELS = ("logging", "print", "fd1", "fd2", "libc-write", "libc-puts")


def emit_everywhere(marker: str) -> None:
    """Writes the marker the ways a process can: Python logging, ``print``, raw fds 1 and 2, and
    libc (``write(2)`` and buffered ``puts``, as native libraries do)."""
    logging.getLogger("x").warning("%s-logging", marker)
    print(f"{marker}-print")
    os.write(1, f"{marker}-fd1\n".encode())
    os.write(2, f"{marker}-fd2\n".encode())
    libc = ctypes.CDLL(None)
    line = f"{marker}-libc-write\n".encode()
    libc.write(1, line, len(line))
    libc.puts(f"{marker}-libc-puts".encode())
    libc.fflush(None)


async def ping_route() -> dict[str, int]:
    """Answers without touching the main process: tells which child is serving."""
    return {"pid": os.getpid()}


def noise_route(marker: str) -> dict[str, int]:
    emit_everywhere(marker)
    return {"pid": os.getpid()}


@asynccontextmanager
async def failing_lifespan(app: FastAPI) -> AsyncIterator[None]:
    raise RuntimeError("lifespan-failure-marker: the model did not load")
    yield  # pragma: no cover


# -- the main process of the terminal tests (run as its own Python process) -----------------------


def serve_and_call(marker: str, log_file: str | None) -> dict[str, Any]:
    """Starts an HTTP child (uvicorn at info, with access log), calls the noisy route once,
    stops the child. Returns what the test needs to know about the run."""
    ctx = multiprocessing.get_context("spawn")
    request_q, response_q = ctx.Queue(), ctx.Queue()
    subprocess = (
        ServerBuilder("logs")
        .with_host("127.0.0.1")
        .with_port(0)
        .uvicorn.with_log_level("info")
        .with_access_log(True)
        .done()
        .routes.with_route("/noise", noise_route)
        .done()
        .subprocess.with_ipc(request_q, response_q)
    )
    if log_file is not None:
        subprocess.with_log_file(log_file)
    server = subprocess.done().build()
    process = server.start_subprocess()
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/noise", params={"marker": marker}, timeout=10)
    finally:
        server.stop(timeout=5.0)
    for q in (request_q, response_q):
        q.cancel_join_thread()
        q.close()
    return {
        "status": response.status_code,
        "child_pid": response.json()["pid"],
        "exitcode": process.exitcode,
        "main_pid": os.getpid(),
    }


def main(argv: list[str]) -> None:
    """``main(marker, result_path, [log_file])``: the result goes to a file, not to stdout, which
    the tests inspect."""
    marker, result_path, *log_file = argv
    result = serve_and_call(marker, log_file[0] if log_file else None)
    with open(result_path, "w") as out:
        json.dump(result, out)
