"""``Heartbeat``: proof of life a main loop may put on ``response_q`` when it has nothing to reply.

Any reply already proves the main loop runs; an idle loop sends none, so a loop that died while
idle looks the same as one that is merely idle. A server built with a liveness beat
(``HealthSettings.beat_timeout``) reports not ready when neither a reply nor a ``Heartbeat`` came
within that many seconds. The ``Engine`` beats by itself (``Engine(..., heartbeat=seconds)``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Heartbeat:
    """Put on ``response_q`` (``response_q.put(Heartbeat())``): the relay notes the time and drops it."""
