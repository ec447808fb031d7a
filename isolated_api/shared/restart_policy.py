"""When to restart a dead worker: a bounded number of times per window, with growing delays, so a
child that fails at start-up is never restarted in a tight loop."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from isolated_api.shared.config import ConfigError


@dataclass(frozen=True)
class RestartPolicy:
    """``max_restarts`` within ``window`` seconds; the n-th restart in a window waits
    ``backoff * 2**(n-1)`` seconds (at most ``max_backoff``). Restarts older than ``window`` are
    forgotten, so a worker that crashes once a day is always replaced."""

    max_restarts: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0
    window: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or self.max_restarts < 1:
            raise ConfigError(f"max_restarts must be an integer >= 1, got {self.max_restarts!r}")
        for name in ("backoff", "max_backoff", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if self.window <= 0:
            raise ConfigError(f"window must be > 0, got {self.window}")


class RestartBudget:
    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._recent: deque[float] = deque()

    def next_delay(self) -> float | None:
        """The delay before the next restart, or None when the budget is spent (give up)."""
        now = self._clock()
        while self._recent and now - self._recent[0] > self._policy.window:
            self._recent.popleft()
        if len(self._recent) >= self._policy.max_restarts:
            return None
        delay = float(min(self._policy.backoff * 2 ** len(self._recent), self._policy.max_backoff))
        self._recent.append(now)
        return delay
