"""Request type, route and a token stepper for the ``engine.steps`` tests. Module-level so the
HTTP child can import the route and unpickle the requests; the stepper runs in the main process."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from isolated_api import IPC, Done, EngineError, sse_response


@dataclass
class Generate:
    id: Hashable
    tokens: int  # how many tokens this stream gets, then Done()
    tag: str = ""  # names the stream in tokens and records; "fail-at:<k>": token k is an EngineError(422)


async def generate_route(body: dict[str, Any], channel: IPC) -> Response:
    stream = channel.submit_streaming(Generate(uuid.uuid4().hex, body["tokens"], body.get("tag", "")))
    return await sse_response(stream, lambda c: json.dumps({"data": c.data, "final": c.is_final}))


@dataclass
class TokenStepper:
    """Token ``k`` of a stream is ``"<tag or id>:<k>"``; after ``tokens`` of them, ``Done()``.
    Records who joined, who left and why, and who was in every step. While ``start`` is clear
    every step holds; while ``gate`` is clear, a step holds once any stream has ``hold_at`` tokens
    (a slow model, for as long as the test needs)."""

    start: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    hold_at: int | None = None
    raise_on_step: int | None = None  # this step (1-based) raises
    joined: list[Hashable] = field(default_factory=list)
    left: list[tuple[Hashable, str]] = field(default_factory=list)
    steps: list[list[Hashable]] = field(default_factory=list)
    emitted: dict[Hashable, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.start.set()
        self.gate.set()

    @property
    def sizes(self) -> list[int]:
        with self._lock:
            return [len(step) for step in self.steps]

    def join(self, requests: list[Generate]) -> None:
        with self._lock:
            for r in requests:
                self.joined.append(r.tag or r.id)
                self.emitted[r.tag or r.id] = 0

    def step(self, active: list[Generate]) -> list[Any]:
        with self._lock:
            self.steps.append([r.tag or r.id for r in active])
            number = len(self.steps)
        self.start.wait(30)
        if self.hold_at is not None and any(self.emitted[r.tag or r.id] >= self.hold_at for r in active):
            self.gate.wait(30)
        if number == self.raise_on_step:
            raise RuntimeError("the model fell over")
        out: list[Any] = []
        with self._lock:
            for r in active:
                name = r.tag or r.id
                k = self.emitted[name]
                if k >= r.tokens:
                    out.append(Done())
                    continue
                self.emitted[name] = k + 1
                if r.tag == f"fail-at:{k}":
                    out.append(EngineError(f"token {k} refused", 422))
                else:
                    out.append(f"{r.tag or r.id}:{k}")
        return out

    def leave(self, request: Generate, why: str) -> None:
        with self._lock:
            self.left.append((request.tag or request.id, why))

    def left_ids(self) -> list[Hashable]:
        with self._lock:
            return [i for i, _ in self.left]
