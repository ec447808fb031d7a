"""When to restart a dead worker, the way Kubernetes treats a pod rather than the way a start-up
check does: a worker that became ready and served is always replaced, at once; only a crash loop
(dying before it is ready, or soon after without serving anything) waits, with a delay that doubles
up to a cap and starts over after a healthy run; and only start-ups that keep failing give up."""

from __future__ import annotations

from dataclasses import dataclass

from isolated_api.shared.config_checks import ConfigError


@dataclass(frozen=True)
class RestartPolicy:
    """``max_restarts``: start-ups in a row that may fail (the worker exits, or is not ready in
    time) before its slot is given up. ``backoff``: the wait before restarting after the first
    crash-loop death, doubling with each one in a row, at most ``max_backoff``. ``window``: the
    healthy stretch: a worker that served a request, or stayed ready this many seconds, ran
    healthy; its death is replaced at once and the crash-loop count starts over."""

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


@dataclass(frozen=True)
class Death:
    """How a worker's life ended, as far as restarting it goes."""

    # Seconds from ready to death; None: it never became ready (a failed start-up).
    ready_for: float | None
    # It sent at least one HTTP response.
    served: bool


class RestartBudget:
    """One slot's history under a policy: how long to wait before its next restart."""

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self.crash_loop = 0
        self.failed_starts = 0

    def next_delay(self, death: Death) -> float | None:
        """Seconds to wait before restarting, or None: give up (start-ups keep failing)."""
        policy = self._policy
        if death.ready_for is None:
            self.failed_starts += 1
            if self.failed_starts >= policy.max_restarts:
                return None
        elif death.served or death.ready_for >= policy.window:
            self.crash_loop = 0
            self.failed_starts = 0
            return 0.0
        else:
            self.failed_starts = 0
        self.crash_loop += 1
        return float(min(policy.backoff * 2 ** (self.crash_loop - 1), policy.max_backoff))
