"""The worker's side: request counts go to the main process in one frame at most every
``REPORT_DELAY`` (with the channel's rejection and drop counts since the last frame), and at once
before a scrape and at shutdown."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from features.ipc.channel import IPCChannel
from features.metrics.book import HttpKey

# Why a delay rather than a frame per loop iteration: at one connection every iteration answers
# one request, so each request cost a frame, a pipe write that wakes the relay's reader, and in
# the main process a decode and a metrics update beside the next request (the child's profile:
# ~15 us a request for the write alone). What it costs: a worker killed loses at most its last
# REPORT_DELAY of counts; a scrape through this worker sends its own counts first.
REPORT_DELAY = 0.02  # seconds


class BatchingRecorder:
    def __init__(
        self, send: Callable[[dict[str, Any]], None], channel: IPCChannel | None, delay: float = REPORT_DELAY
    ) -> None:
        self._send = send
        self._channel = channel
        self._delay = delay
        self._counts: Counter[HttpKey] = Counter()
        self._seen = (0, 0)
        self._timer: asyncio.TimerHandle | None = None

    def record(self, method: str, route: str, status: int) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)
        self._counts[(method, route, status)] += 1

    def flush(self) -> None:
        """Sends what was counted since the last report, if anything."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, Counter()
        rejected = dropped = 0
        if self._channel is not None:
            now = (self._channel.rejected_count, self._channel.dropped_count)
            rejected, dropped = now[0] - self._seen[0], now[1] - self._seen[1]
            self._seen = now
        if counts or rejected or dropped:
            self._send({"http": list(counts.items()), "rejected": rejected, "dropped": dropped})
