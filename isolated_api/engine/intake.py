"""Intake: the one thread that reads ``request_q``.

It blocks in ``request_q.get()`` (no polling) and takes a message only while fewer than ``limit``
are held by the engine, so when every handler slot is busy it stops taking and the queue fills:
that is the backpressure the HTTP side sees. Whatever is already queued when it wakes is drained
in the same batch (up to the free room), and the batch reaches the engine's loop with a single
wake-up. ``stop()`` wakes a blocked ``get()`` with a sentinel carrying a token only this intake
knows; while stopping it takes everything up to its sentinel so the engine can refuse it (503)
rather than leave it to time out.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("isolated_api.engine")


@dataclass(frozen=True)
class StopIntake:
    token: str


class Intake:
    def __init__(
        self, request_q: Any, limit: int, deliver: Callable[[list[Any]], bool], on_exit: Callable[[], None]
    ) -> None:
        self._request_q = request_q
        self._limit = limit
        self._deliver = deliver  # returns False once nobody takes batches any more
        self._on_exit = on_exit
        self._token = uuid.uuid4().hex
        self._room = threading.Condition()
        self._held = 0
        # Batchers and steppers whose queue is full (max_queued): while any is, nothing more is
        # read, so request_q fills and the HTTP side answers 503 as for a busy engine.
        self._gates: set[object] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="isolated-api-engine-intake", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def release(self, count: int = 1) -> None:
        """The engine is done with ``count`` messages: room for as many more."""
        with self._room:
            self._held -= count
            self._room.notify()

    def hold(self, owner: object, full: bool) -> None:
        """``owner`` (a batcher or stepper) is full (stop reading) or has room again."""
        with self._room:
            if full:
                self._gates.add(owner)
            else:
                self._gates.discard(owner)
                self._room.notify()

    @property
    def held_back(self) -> bool:
        """True while a full batcher or stepper keeps this intake from reading."""
        return bool(self._gates)

    def stop(self) -> None:
        with self._room:
            self._stopping = True
            self._room.notify()
        try:
            self._request_q.put(StopIntake(self._token))
        except (ValueError, OSError) as exc:
            logger.warning("could not wake the engine's request reader: %r", exc)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _reserve(self, block: bool) -> bool:
        with self._room:
            while (self._held >= self._limit or self._gates) and not self._stopping:
                if not block:
                    return False
                self._room.wait()
            self._held += 1
            return True

    def _is_mine(self, message: Any) -> bool:
        return type(message) is StopIntake and message.token == self._token

    def _run(self) -> None:
        try:
            self._read()
        finally:
            self._on_exit()

    def _read(self) -> None:
        request_q = self._request_q
        while True:
            self._reserve(block=True)
            try:
                batch = [request_q.get()]
            except (EOFError, OSError, ValueError) as exc:
                logger.error("request_q unusable, the engine's reader stops: %r", exc)
                return
            except Exception:
                logger.exception("a request could not be read from request_q")
                self.release()
                continue
            done = self._is_mine(batch[0])
            while not done and self._reserve(block=False):
                try:
                    message = request_q.get_nowait()
                except queue.Empty:
                    self.release()
                    break
                except Exception:
                    logger.exception("a request could not be read from request_q")
                    self.release()
                    break
                done = self._is_mine(message)
                batch.append(message)
            if done:
                batch = [m for m in batch if not self._is_mine(m)]
                self.release()
            if batch and not self._deliver(batch):
                return
            if done:
                return
