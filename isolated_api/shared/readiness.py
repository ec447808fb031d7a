"""When is the server ready? When the main process answers a probe within the deadline, the
channel is open, and the main process is not sitting on requests: if some are pending, the oldest
for longer than the deadline, and no reply at all came within the deadline, its loop has stopped
reading ``request_q`` (or is stuck) and new requests would only time out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from isolated_api.shared.config import ConfigError


@dataclass(frozen=True)
class HealthSettings:
    """Paths of the built-in health routes and the readiness deadline (seconds)."""

    live_path: str = "/health/live"
    ready_path: str = "/health/ready"
    deadline: float = 1.0

    def __post_init__(self) -> None:
        for name in ("live_path", "ready_path"):
            path = getattr(self, name)
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(f"health {name} must start with '/', got {path!r}")
        if self.live_path == self.ready_path:
            raise ConfigError("health live_path and ready_path must differ")
        if isinstance(self.deadline, bool) or not isinstance(self.deadline, int | float) or self.deadline <= 0:
            raise ConfigError(f"health deadline must be > 0 seconds, got {self.deadline!r}")


def main_process_stalled(facts: dict[str, Any], deadline: float) -> bool:
    return bool(
        facts.get("pending", 0) > 0
        and facts.get("oldest_pending_age", 0.0) > deadline
        and facts.get("last_reply_age", 0.0) > deadline
    )


def readiness_problem(facts: dict[str, Any] | None, *, channel_open: bool, deadline: float) -> str | None:
    """None when ready, else why not."""
    if not channel_open:
        return "the IPC channel is closed"
    if facts is None:
        return f"the main process did not answer a probe within {deadline:g} s"
    if main_process_stalled(facts, deadline):
        return (
            f"the main process has not answered for {facts['last_reply_age']:.1f} s "
            f"with {facts['pending']} request(s) pending"
        )
    return None
