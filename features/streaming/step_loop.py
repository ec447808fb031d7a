"""A main loop shaped like a batched model server, replying through a ``ReplyBatcher``.

Each step produces one token for every active stream (as a model decoding a batch of sequences
does) and hands the whole step to ``put_many``: one message on ``response_q`` per step, however
many streams are running. Other requests are answered as they arrive, by ``answer``. The streams are
the streaming slice's ``Generate``/``Token``, so its ``/generate`` route serves them as SSE.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from isolated_api import ReplyBatcher

from .streaming import Generate, Token


class StepLoop:
    """``start()``/``stop()`` a thread that reads ``request_q`` and replies in steps.

    ``batch``: streams to wait for before the first step (up to ``gather_timeout`` seconds),
    as a server that fills its batch first would; ``step_seconds``: a pause per step standing in
    for the model's work. ``answer(request)`` answers any other request (None: no reply)."""

    def __init__(
        self,
        request_q: Any,
        response_q: Any,
        answer: Any = None,
        *,
        batch: int = 1,
        step_seconds: float = 0.0,
        gather_timeout: float = 30.0,
    ) -> None:
        self.request_q = request_q
        self.batcher = ReplyBatcher(response_q)
        self.answer = answer
        self.batch = batch
        self.step_seconds = step_seconds
        self.gather_timeout = gather_timeout
        self.steps = 0
        self._active: dict[Any, tuple[Generate, int]] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="step-loop", daemon=True)

    def start(self) -> StepLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self.request_q.put(None)
        self._thread.join(10)
        self.batcher.close()

    def _take(self, request: Any) -> None:
        if type(request) is Generate:
            self._active[request.id] = (request, 0)
        elif self.answer is not None:
            reply = self.answer(request)
            if reply is not None:
                self.batcher.put(reply)

    def _read(self, block: bool, timeout: float | None = None) -> None:
        try:
            request = self.request_q.get(block, timeout)
        except queue.Empty:
            return
        if request is None:
            self._stopping = True
            return
        self._take(request)

    def _run(self) -> None:
        gather_until = time.monotonic() + self.gather_timeout
        while not self._stopping:
            if not self._active:
                self._read(block=True)
                continue
            while len(self._active) < self.batch and time.monotonic() < gather_until and not self._stopping:
                self._read(block=True, timeout=0.05)
            while not self.request_q.empty() and not self._stopping:  # joiners between steps
                self._read(block=False)
            self._step()

    def _step(self) -> None:
        tokens = []
        for request_id, (request, index) in list(self._active.items()):
            final = index + 1 >= request.max_tokens
            tokens.append(Token(request_id, index, f"t{index} ", is_final=final))
            if final:
                del self._active[request_id]
            else:
                self._active[request_id] = (request, index + 1)
        self.batcher.put_many(tokens)
        self.steps += 1
        if self.step_seconds:
            time.sleep(self.step_seconds)
