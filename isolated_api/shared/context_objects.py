"""Which multiprocessing object in a part was made by another start method's context.

``multiprocessing.Event()`` (and ``Lock``, ``Value``, ``Queue``...) uses the platform's default
context, ``fork`` on Linux. Such an object can't be shared with a ``spawn`` or ``forkserver``
worker, and pickling it raises a ``RuntimeError`` about "a SemLock" that names neither the object
nor the factory to use instead. ``find_wrong_context`` pickles the part again and tries each
multiprocessing object it meets on its own, outermost first, so the user is told "the Event".
"""

from __future__ import annotations

from multiprocessing import queues, sharedctypes, synchronize
from multiprocessing.reduction import ForkingPickler
from typing import Any

from isolated_api.shared.spawn_payload import as_if_spawning, check_sendable

_SHARED = (
    synchronize.SemLock,
    synchronize.Condition,
    synchronize.Event,
    synchronize.Barrier,
    queues.Queue,
    queues.SimpleQueue,
    sharedctypes.SynchronizedBase,
)


class _Found(Exception):
    def __init__(self, obj: object) -> None:
        super().__init__()
        self.obj = obj


class _Finder(ForkingPickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _SHARED):
            try:
                check_sendable(obj)
            except RuntimeError:
                raise _Found(obj) from None
        return NotImplemented


class _Discard:
    """A pickle target that keeps nothing: only the walk over the part matters."""

    def write(self, data: bytes) -> int:
        return len(data)


def find_wrong_context(part: object) -> object | None:
    """The outermost multiprocessing object in ``part`` that can't be sent on its own, if any."""
    try:
        with as_if_spawning():
            _Finder(_Discard()).dump(part)
    except _Found as found:
        return found.obj
    except Exception:
        return None  # something else fails first: the caller reports that as it is
    return None


def factory_name(obj: object) -> str:
    """The method of a multiprocessing context that makes an object like ``obj``."""
    if isinstance(obj, sharedctypes.SynchronizedArray | sharedctypes.SynchronizedString):
        return "Array"
    if isinstance(obj, sharedctypes.SynchronizedBase):
        return "Value"
    return type(obj).__name__
