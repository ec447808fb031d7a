"""When is the server ready? When the main process answers a probe within the deadline, the
channel is open, and the main process reads ``request_q``: not ready when a request has waited
unread there for longer than the deadline *and* nothing at all was read from it for as long
(``unread_age``, ``read_quiet_age`` in the relay's facts). A loop busy with one long request is
ready, and so is one working through a backlog; one that stopped reading while requests wait is
not. Answering within the deadline is not asked: a generation may take minutes. (Readiness is not
load shedding: pulling every busy replica would leave the balancer none; ``max_pending`` sheds.)

A queue that can't count what it holds (``unread_age`` None) leaves replies to judge: if requests
are pending, the oldest for longer than the deadline, and no reply at all came within it, the loop
has stopped reading (or is stuck).

Sticky: once a request timed out with no reply at all since it was forwarded, the server stays not
ready until the main process replies to something again (``unanswered_age``), even with nothing
pending any more. With a liveness beat (``beat_timeout``) an idle loop must prove itself too: a
reply or a ``Heartbeat`` within that many seconds, or not ready.

The same rules judge a remote engine (its pong carries its relay's facts) and ``Server.health()``.
"""

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
    # None: no beat expected (an idle loop is taken as alive).
    beat_timeout: float | None = None

    def __post_init__(self) -> None:
        for name in ("live_path", "ready_path"):
            path = getattr(self, name)
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(f"health {name} must start with '/', got {path!r}")
        if self.live_path == self.ready_path:
            raise ConfigError("health live_path and ready_path must differ")
        if isinstance(self.deadline, bool) or not isinstance(self.deadline, int | float) or self.deadline <= 0:
            raise ConfigError(f"health deadline must be > 0 seconds, got {self.deadline!r}")
        beat = self.beat_timeout
        if beat is not None and (isinstance(beat, bool) or not isinstance(beat, int | float) or not beat > 0):
            raise ConfigError(f"health beat_timeout must be > 0 seconds or None, got {beat!r}")


def main_process_stalled(facts: dict[str, Any], deadline: float) -> bool:
    """The rule for a queue that can't count: requests wait, and no reply came for the deadline."""
    return bool(
        facts.get("pending", 0) > 0
        and facts.get("oldest_pending_age", 0.0) > deadline
        and facts.get("last_reply_age", 0.0) > deadline
    )


def main_loop_problem(facts: dict[str, Any], deadline: float, beat_timeout: float | None = None) -> str | None:
    """Why the main loop behind a relay with these ``facts`` takes no requests; None if it does."""
    unread_age = facts.get("unread_age")
    if unread_age is not None:
        quiet = facts.get("read_quiet_age")
        quiet = unread_age if quiet is None else quiet
        if unread_age > deadline and quiet > deadline:
            return (
                f"the main process is not reading request_q: {facts.get('unread', 0)} request(s) waiting "
                f"unread, the oldest for {unread_age:.1f} s, none read for {quiet:.1f} s"
            )
    elif main_process_stalled(facts, deadline):
        return (
            f"the main process has not answered for {facts['last_reply_age']:.1f} s "
            f"with {facts['pending']} request(s) pending"
        )
    if facts.get("unanswered_age", 0.0) > deadline:
        return (
            f"a request timed out unanswered and the main process has not replied since "
            f"({facts.get('last_reply_age', 0.0):.1f} s ago)"
        )
    if beat_timeout is not None and facts.get("last_reply_age", 0.0) > beat_timeout:
        return f"no reply or heartbeat from the main process for {facts['last_reply_age']:.1f} s"
    return None


def readiness_problem(
    facts: dict[str, Any] | None, *, channel_open: bool, deadline: float, beat_timeout: float | None = None
) -> str | None:
    """None when ready, else why not."""
    if not channel_open:
        return "the IPC channel is closed"
    if facts is None:
        return f"the main process did not answer a probe within {deadline:g} s"
    if facts.get("engine_problem"):
        # Remote engines: ready while at least one answers its pings and reads its requests.
        return str(facts["engine_problem"])
    return main_loop_problem(facts, deadline, beat_timeout)
