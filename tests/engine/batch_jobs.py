"""Request types, routes and a probe for the batching tests. Module-level so the HTTP child can
import the routes and unpickle the requests; the batch functions run in the main process only."""

from __future__ import annotations

import os
import threading
import time
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


def hold_worker_route(body: dict[str, Any]) -> dict[str, Any]:
    """Holds the HTTP worker that takes it: a sync wait on its event loop (deliberately: that
    worker accepts no connection meanwhile, so the other one takes them all), from when it writes
    ``body["started"]`` until ``body["until"]`` exists (at most 30 s)."""
    Path(body["started"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + 30
    while not os.path.exists(body["until"]) and time.monotonic() < deadline:
        time.sleep(0.005)  # polling a file another process creates; bounded by the deadline
    return {"pid": os.getpid()}


async def hold_worker_async_route(body: dict[str, Any]) -> dict[str, Any]:
    # async def: run on the worker's event loop itself (a plain def would go to a thread).
    return hold_worker_route(body)


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
