"""``IPCFacts``: what ``Server.ipc`` shows users of the main process's end of the link.

The relay itself stays inside: it routes replies, owns locks and a reader thread, and has methods
(``forward``, ``close``) that would break a running server if called from outside. Users read
counts off it; this view gives them those, read-only, and nothing else.
"""

from __future__ import annotations

from isolated_api.main.relay import Relay


class IPCFacts:
    """Read-only counts of the main process's end of the link (subprocess mode), read live."""

    __slots__ = ("_relay",)

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    @property
    def pending_count(self) -> int:
        """Requests forwarded to the main process and still awaiting their (final) reply, over
        every HTTP worker."""
        return self._relay.pending_count

    @property
    def forwarded_count(self) -> int:
        """Requests put on ``request_q`` so far."""
        return self._relay.forwarded_count

    @property
    def dropped_count(self) -> int:
        """Replies that matched no waiting request (late, unknown, abandoned, no id, unreadable)."""
        return self._relay.dropped_count

    @property
    def rejected_count(self) -> int:
        """Requests refused by the server-wide ``max_pending`` bound."""
        return self._relay.rejected_count

    @property
    def cancel_notices_sent(self) -> int:
        """``CancelRequest`` messages put on ``request_q`` (``.subprocess.with_cancellation()``)."""
        return self._relay.cancel_notices_sent

    @property
    def local_replies(self) -> int:
        """Replies made in this process and handed to the relay directly, never on ``response_q``."""
        return self._relay.local_replies

    @property
    def max_pending(self) -> int | None:
        """The server-wide bound on requests awaiting replies (None: unbounded)."""
        return self._relay.max_pending

    @property
    def is_running(self) -> bool:
        """True while the relay reads ``response_q`` (from ``start_subprocess()`` to ``stop()``)."""
        return self._relay.is_running

    # Older names, kept for code written against the relay this property used to return.
    @property
    def route_count(self) -> int:
        """The older name of ``pending_count``."""
        return self._relay.pending_count

    @property
    def dropped_replies(self) -> int:
        """The older name of ``dropped_count``."""
        return self._relay.dropped_count

    def __repr__(self) -> str:
        return (
            f"IPCFacts(pending_count={self.pending_count}, forwarded_count={self.forwarded_count}, "
            f"dropped_count={self.dropped_count}, rejected_count={self.rejected_count})"
        )
