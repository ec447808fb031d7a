"""What the engine puts on ``response_q``. Handlers return or yield plain data; the engine
addresses it to the request's id, so handlers never build reply objects themselves."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Result:
    """The reply to a unary request: ``data`` is what the handler returned."""

    id: Hashable
    data: Any


@dataclass(frozen=True)
class StreamChunk:
    """One chunk of a stream. Each item a generator handler yields is sent at once with
    ``is_final=False``; when the generator ends, one more chunk with ``is_final=True`` closes the
    stream. Its ``data`` is the generator's return value (``None`` unless a sync generator
    ``return``s something), so readers skip ``data`` of the final chunk when it is ``None``."""

    id: Hashable
    data: Any
    is_final: bool = False


@dataclass(frozen=True)
class HealthPing:
    """Put on ``request_q`` (e.g. by a ``/health`` route): the engine answers with ``HealthStatus``
    itself, without user code and without taking a handler slot."""

    id: Hashable


@dataclass(frozen=True)
class HealthStatus:
    """The engine's answer to a ``HealthPing``."""

    id: Hashable
    running: int
    concurrency: int
    served: int
    failed: int
    cancelled: int
