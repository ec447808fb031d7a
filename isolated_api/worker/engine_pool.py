"""What an HTTP worker knows about each remote engine, and which one gets the next request.

The choice follows vLLM's data-parallel client: the least-loaded ready engine, where the load is
what this worker has in flight there plus what the engine reported waiting from others at its
last pong, divided by the engine's capacity (its ``max_pending``; 1 when unbounded). Ties rotate,
so equal engines share evenly even when idle. Only engines whose last pong says their main loop
takes requests are chosen; a stalled, lost, connecting or leaving engine gets none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

CONNECTING = "connecting"  # no pong yet since the link opened or the engine was lost
READY = "ready"
STALLED = "stalled"  # it answers pings, but its main loop has stopped taking requests
LOST = "lost"  # its connection closed, or its pings went unanswered; requests on it ended
LEAVING = "leaving"  # its DNS name no longer resolves to it: no new requests, closed when idle


@dataclass(eq=False)
class EngineState:
    address: str
    state: str = CONNECTING
    boot: bytes = b""
    in_flight: int = 0
    # From its last pong: what waited there in all, how much of it was this worker's, its bound.
    reported_pending: int = 0
    mine_at_pong: int = 0
    capacity: int = 0
    last_pong: float = 0.0
    problem: str | None = None
    served: int = 0
    lost_count: int = 0
    late_replies: int = 0
    # What the engine host reported dropping itself (replies nobody waited for any more).
    engine_dropped_replies: int = 0
    # The link's sockets for this engine (zmq objects; Any keeps this module free of zmq).
    sock: Any = None
    monitor: Any = None
    check_scheduled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def load(self) -> float:
        others = max(0, self.reported_pending - self.mine_at_pong)
        return (self.in_flight + others) / (self.capacity or 1)

    def describe(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        return {
            "address": self.address,
            "state": self.state,
            "in_flight": self.in_flight,
            "pending": self.reported_pending,
            "capacity": self.capacity or None,
            "served": self.served,
            "lost": self.lost_count,
            "late_replies": self.late_replies,
            "engine_dropped_replies": self.engine_dropped_replies,
            "last_pong_age": None if not self.last_pong else round(now - self.last_pong, 3),
            "problem": self.problem,
        }


class EnginePool:
    def __init__(self) -> None:
        self.engines: list[EngineState] = []
        self._turn = 0

    def choose(self, exclude: set[int] | None = None) -> EngineState | None:
        """The least-loaded ready engine not in ``exclude`` (ids of states); ties rotate."""
        engines = self.engines
        count = len(engines)
        if not count:
            return None
        self._turn = (self._turn + 1) % count
        best: EngineState | None = None
        best_load = 0.0
        for offset in range(count):
            engine = engines[(self._turn + offset) % count]
            if engine.state != READY or (exclude and id(engine) in exclude):
                continue
            load = engine.load
            if best is None or load < best_load:
                best, best_load = engine, load
        return best

    def by_address(self, address: str) -> EngineState | None:
        for engine in self.engines:
            if engine.address == address:
                return engine
        return None

    def problem(self) -> str | None:
        """None while at least one engine is ready; else what each one is doing."""
        if any(engine.state == READY for engine in self.engines):
            return None
        if not self.engines:
            return "no engine address resolved yet"
        states = ", ".join(
            f"{engine.address} {engine.state}" + (f" ({engine.problem})" if engine.problem else "")
            for engine in self.engines
        )
        return f"no engine is ready: {states}"
