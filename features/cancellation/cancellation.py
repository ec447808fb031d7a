"""Cancellation, as a user writes it: the main process stops work that nobody waits for.

Built with ``.subprocess.with_cancellation()``, the server puts ``CancelRequest(id, reason)`` on
``request_q`` once per request whose client went away, that timed out, was cancelled, or whose HTTP
worker died. The route needs nothing special; the main loop must expect these messages: it stops
the work for that id and sends no reply (one would be dropped anyway).

HTTP child:   POST /work -> ``await channel.submit(Work(...))``.
Main process: ``CancellableWork`` answers each ``Work`` with ``WorkDone`` once its (stand-in)
computation ends, unless a ``CancelRequest`` for its id stops it first.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from isolated_api import IPC, CancelRequest


@dataclass
class Work:
    id: str
    text: str = ""


@dataclass
class WorkDone:
    id: str
    text: str


async def work_route(body: dict[str, Any], channel: IPC) -> dict[str, str]:
    """POST {"text"} -> the main process's answer."""
    reply = await channel.submit(Work(uuid.uuid4().hex, str(body.get("text", ""))))
    return {"text": reply.text}


class CancellableWork:
    """The main process's behaviour, called once per message read from ``request_q`` (each in a
    thread of its own). A ``Work`` stands in for a long computation: it runs until ``release()``;
    a ``CancelRequest`` for its id ends it early, without a reply. ``stopped`` lists the ids whose
    work a cancel ended. ``honour_cancels=False`` is work that can't be interrupted: it replies
    anyway, and the server drops that late reply."""

    def __init__(self, *, honour_cancels: bool = True) -> None:
        self.honour_cancels = honour_cancels
        self.stopped: list[Hashable] = []
        self._released = False
        # A CancelRequest can be handled before its Work's thread starts waiting (each message
        # has a thread of its own), so cancels are remembered by id rather than signalled.
        self._cancelled: set[Hashable] = set()
        self._changed = threading.Condition()

    def release(self) -> None:
        """Lets every held computation finish."""
        with self._changed:
            self._released = True
            self._changed.notify_all()

    def __call__(self, message: Any) -> WorkDone | None:
        if isinstance(message, CancelRequest):
            with self._changed:
                self._cancelled.add(message.id)
                self._changed.notify_all()
            return None
        assert isinstance(message, Work)
        with self._changed:
            self._changed.wait_for(lambda: self._released or self._is_cancelled(message.id), timeout=60)
            if self._is_cancelled(message.id):
                self._cancelled.discard(message.id)
                self.stopped.append(message.id)
                return None
        return WorkDone(message.id, message.text.upper())

    def _is_cancelled(self, request_id: Hashable) -> bool:
        return self.honour_cancels and request_id in self._cancelled
