"""What the relay puts on ``request_q`` for a request whose large buffers are in a worker's arena.

The request is not copied out of the arena on the relay's thread: ``request_q`` carries a small
``SharedRequest`` (the slot table and the in-band stream), and unpickling it where the main loop
reads the queue copies the buffers out, once, into the user's objects, and frees the slots. So a
16 MiB upload crosses ``request_q``'s pipe in a few hundred bytes, and never holds its write lock
while other workers' requests wait. With a binary codec (msgspec) the main loop gets the encoded
``bytes``, as it does without the arena.

A request's slots are freed when it is read, whatever became of it meanwhile: it is still queued
after a timeout or a cancel, and freeing its slots then would let a later request overwrite what
the main loop is about to read. A dead worker's arena is unmapped once the requests it left queued
are read (at once, if none are); one never read (the main loop never takes it) keeps its arena
mapped until this process exits. Nothing is named in ``/dev/shm`` either way (``shared/arena.py``).
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from isolated_api.shared import shared_payload
from isolated_api.shared.arena import SLOTS, Arena, SlotAllocator
from isolated_api.shared.codecs import Codec, PickleCodec
from isolated_api.shared.shared_payload import Segment


class MainArena:
    """The main process's mapping of one worker incarnation's arena, counting the requests that
    still point into it from ``request_q``."""

    def __init__(self, arena: Arena, min_size: int) -> None:
        self.arena = arena
        self.min_size = min_size
        # Replies are written into the arena's down region by this process alone.
        self.replies = SlotAllocator(arena, arena.down, SLOTS)
        self.key = next(_keys)
        self._lock = threading.Lock()
        self._queued = 0
        self._retired = False
        with _lock:
            _arenas[self.key] = self

    def queued(self) -> None:
        with self._lock:
            self._queued += 1
        _counts["requests"] += 1

    def replied(self) -> None:
        _counts["replies"] += 1

    def read(self) -> None:
        with self._lock:
            self._queued -= 1
            done = self._retired and self._queued == 0
        if done:
            self._close()

    def retire(self) -> None:
        """The worker is gone: unmapped now, or once its queued requests are read."""
        with self._lock:
            self._retired = True
            done = self._queued == 0
        if done:
            self._close()

    def _close(self) -> None:
        with _lock:
            _arenas.pop(self.key, None)
        self.arena.close()


_keys = itertools.count(1)
_lock = threading.Lock()
_arenas: dict[int, MainArena] = {}


# Payloads that travelled in an arena since this process started (for tests and figures).
_counts = {"requests": 0, "replies": 0}


def shared_counts() -> dict[str, int]:
    """How many requests and replies crossed with buffers in an arena, in this process."""
    return dict(_counts)


def arenas() -> list[MainArena]:
    """The arenas this process has mapped (for tests and figures)."""
    with _lock:
        return list(_arenas.values())


def open_arenas() -> int:
    """How many arenas this process has mapped (for tests and figures)."""
    with _lock:
        return len(_arenas)


class SharedRequest:
    """A request on ``request_q`` whose buffers wait in an arena: unpickled, it is the request."""

    __slots__ = ("binary", "inline", "key", "segments")

    def __init__(self, owner: MainArena, segments: list[Segment], inline: bytes, codec: Codec) -> None:
        self.key = owner.key
        self.segments = tuple(segments)
        self.inline = inline
        self.binary = type(codec) is not PickleCodec

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load, (self.key, self.segments, self.inline, self.binary))

    def load(self) -> Any:
        return _load(self.key, self.segments, self.inline, self.binary)

    def discard(self) -> None:
        """It was never queued (refused): its slots are freed."""
        with _lock:
            owner = _arenas.get(self.key)
        if owner is not None:
            shared_payload.free(owner.arena, list(self.segments))
            owner.read()


def _load(key: int, segments: tuple[Segment, ...], inline: bytes, binary: bool) -> Any:
    with _lock:
        owner = _arenas.get(key)
    if owner is None:
        raise RuntimeError(
            f"a shared-payload request outlived its arena {key}: read request_q in the process that runs the server"
        )
    try:
        with memoryview(inline) as view:
            if binary:
                try:
                    return shared_payload.join(list(segments), view, owner.arena)
                finally:
                    shared_payload.free(owner.arena, list(segments))
            return shared_payload.decode(PickleCodec(), list(segments), view, owner.arena)
    finally:
        owner.read()
