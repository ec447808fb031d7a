"""Request types, routes and a probe for the batching tests. Module-level so the HTTP child can
import the routes and unpickle the requests; the batch functions run in the main process only."""

from __future__ import annotations

import os
import select
import threading
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isolated_api import IPC, EngineError, RequestContext


@dataclass
class Embed:
    id: Hashable
    text: str
    worker: int = 0  # pid of the HTTP worker that sent it


async def embed_route(body: dict[str, Any], channel: IPC) -> dict[str, Any]:
    reply = await channel.submit(Embed(uuid.uuid4().hex, body["text"], os.getpid()))
    return {"data": reply.data}


async def hold_worker_route(body: dict[str, Any]) -> dict[str, Any]:
    """Holds the HTTP worker that takes it: ``async def`` that never awaits, so it blocks that
    worker's event loop (deliberately: it accepts no connection meanwhile, and the other worker
    takes them all). It opens the FIFO ``body["fifo"]`` for reading, writes ``body["started"]``,
    and returns once a byte is written to the FIFO (at most 30 s)."""
    fd = os.open(body["fifo"], os.O_RDONLY | os.O_NONBLOCK)
    try:
        Path(body["started"]).write_text(str(os.getpid()))  # noqa: ASYNC240 (blocking is the point)
        select.select([fd], [], [], 30)
    finally:
        os.close(fd)
    return {"pid": os.getpid()}


@dataclass
class BatchProbe:
    """A batch function that upper-cases texts and records each call. Texts ask for behaviour:
    ``"bad:<status>"`` fails that item alone, ``"raise"`` / ``"raise:<status>"`` fails the whole
    call. While ``hold`` is clear, calls wait for it (or for all their members to be cancelled)."""

    hold: threading.Event = field(default_factory=threading.Event)
    calls: list[list[str]] = field(default_factory=list)
    workers: list[set[int]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    running: int = 0
    max_running: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.hold.set()

    def seen(self) -> list[str]:
        with self._lock:
            return [text for call in self.calls for text in call]

    def __call__(self, requests: list[Embed], contexts: list[RequestContext]) -> list[Any]:
        with self._lock:
            self.calls.append([r.text for r in requests])
            self.workers.append({r.worker for r in requests})
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            while not self.hold.wait(0.01):  # the model's work, as long as the test wants
                if all(ctx.cancelled for ctx in contexts):
                    break
            with self._lock:
                self.cancelled += [r.text for r, ctx in zip(requests, contexts, strict=True) if ctx.cancelled]
            for r in requests:
                if r.text.startswith("raise"):
                    _, _, status = r.text.partition(":")
                    if status:
                        raise EngineError(f"refused by {r.text}", int(status))
                    raise ValueError(f"the model broke on {r.text}")
            return [_item(r.text) for r in requests]
        finally:
            with self._lock:
                self.running -= 1


def _item(text: str) -> Any:
    if text.startswith("bad:"):
        return EngineError(f"cannot embed {text}", int(text.split(":")[1]))
    return text.upper()
