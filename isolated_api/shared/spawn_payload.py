"""How the server's spec reaches a spawned HTTP worker.

It is pickled inside multiprocessing's own spawning context (while the worker's ``Process`` is
being started), where the objects multiprocessing shares only by inheritance (``Event``,
``Lock``, ``Value``, ``Queue``...) may be pickled; plain ``pickle.dumps`` in the parent refuses
them. The worker unpickles it only when it asks (``load()``), after its output is redirected, so
whatever the user's modules print at import lands in its log file. Under ``fork`` nothing is
pickled and ``load()`` returns the object itself.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import get_spawning_popen, set_spawning_popen
from multiprocessing.reduction import ForkingPickler
from typing import Any


class PickledPayload:
    """What arrives in the worker: bytes, unpickled on ``load()``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def load(self) -> Any:
        return pickle.loads(self._data)


class SpawnPayload:
    """What the parent hands to ``Process(args=...)``."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def load(self) -> Any:
        return self._obj

    def __reduce__(self) -> tuple[type[PickledPayload], tuple[bytes]]:
        # Called while multiprocessing pickles the process object for spawn/forkserver: the
        # spawning context is set, so ForkingPickler takes what plain pickle would refuse.
        return PickledPayload, (bytes(ForkingPickler.dumps(self._obj)),)


class _SharedFd:
    def __init__(self, fd: int) -> None:
        self.fd = fd


class _CheckOnly:
    """Stands in for the process being started while ``check_sendable`` pickles: a file
    descriptor to share is left as it is (nothing is started, nothing is sent). The two methods
    are what ``multiprocessing.reduction`` asks of a spawning ``Popen``."""

    def duplicate_for_child(self, fd: int) -> int:
        return fd

    def DupFd(self, fd: int) -> _SharedFd:  # spelled as multiprocessing calls it
        return _SharedFd(fd)


@contextmanager
def as_if_spawning() -> Iterator[None]:
    """Within it, pickling behaves as while multiprocessing starts a worker."""
    outer = get_spawning_popen()
    set_spawning_popen(_CheckOnly())  # type: ignore[arg-type]  # duck-typed, as multiprocessing uses it
    try:
        yield
    finally:
        set_spawning_popen(outer)


def check_sendable(obj: object) -> None:
    """Pickles ``obj`` as multiprocessing will when it starts a worker, and throws the result away:
    raises what that pickling raises (objects shared by inheritance pass, as they will then)."""
    with as_if_spawning():
        ForkingPickler.dumps(obj)
