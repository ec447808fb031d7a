"""The benchmark's model: cost per call, one call at a time, its books readable from any process.

``FakeGPU.run(items)`` takes a lock (one call at a time, as on one GPU) and sleeps
``call_seconds + items * item_seconds``: ``time.sleep`` releases the GIL, so whatever else the
process runs goes on meanwhile, as beside a real accelerator. Calls, items and busy seconds are
kept in a small memory-mapped file, so the benchmark reads the same books whether the model runs
in its own process (our engine) or in a server's worker process (LitServe's inference worker).
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import threading
import time
from dataclasses import dataclass

_BOOKS = struct.Struct("dqq")  # busy seconds, calls, items

# Issue 27's benchmark settings, the same for every side: the model's cost, the batcher's limits
# (ours and LitServe's) and the HTTP workers.
CALL_SECONDS = 0.005
ITEM_SECONDS = 0.0001
STEP_ITEM_SECONDS = 0.00005
MAX_BATCH = 32
MAX_WAIT = 0.002
WORKERS = 2


@dataclass(frozen=True)
class Books:
    busy: float
    calls: int
    items: int

    def since(self, before: Books) -> Books:
        return Books(self.busy - before.busy, self.calls - before.calls, self.items - before.items)

    @property
    def mean_batch(self) -> float:
        return self.items / self.calls if self.calls else 0.0


class FakeGPU:
    """Create one with ``FakeGPU.create(...)`` in the benchmark; a server process opens the same
    books by ``path`` (``FakeGPU.attach``). The creator ``close(unlink=True)``s it. (A file, not
    ``multiprocessing.shared_memory``: on Python 3.11 every process attaching to a block registers
    it with its own resource tracker, which unlinks it when that process ends.)"""

    def __init__(self, path: str, call_seconds: float, item_seconds: float) -> None:
        self.path = path
        self.call_seconds = call_seconds
        self.item_seconds = item_seconds
        with open(path, "r+b") as file:
            self._books = mmap.mmap(file.fileno(), _BOOKS.size)
        self._lock = threading.Lock()

    @classmethod
    def create(cls, call_seconds: float, item_seconds: float) -> FakeGPU:
        fd, path = tempfile.mkstemp(prefix="fake-gpu-")
        with os.fdopen(fd, "wb") as file:
            file.write(_BOOKS.pack(0.0, 0, 0))
        return cls(path, call_seconds, item_seconds)

    @classmethod
    def attach(cls, path: str, call_seconds: float, item_seconds: float) -> FakeGPU:
        return cls(path, call_seconds, item_seconds)

    def run(self, items: int) -> None:
        with self._lock:
            started = time.perf_counter()
            time.sleep(self.call_seconds + items * self.item_seconds)
            busy, calls, total = _BOOKS.unpack_from(self._books, 0)
            _BOOKS.pack_into(self._books, 0, busy + time.perf_counter() - started, calls + 1, total + items)

    def books(self) -> Books:
        return Books(*_BOOKS.unpack_from(self._books, 0))

    def close(self, unlink: bool = False) -> None:
        self._books.close()
        if unlink:
            os.unlink(self.path)
