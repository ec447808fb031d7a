"""The worker's side: request counts gathered during one loop iteration go to the main process
in one frame (with the channel's rejection and drop counts since the last frame); a scrape and
the shutdown send what is pending first."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from isolated_api.shared.metrics_report import HttpKey
from isolated_api.worker.channel import IPCChannel

# Why a frame per loop iteration (per request at one connection) rather than one per interval: a
# 20 ms interval was tried. It saved CPU at one connection and made the one-connection p50
# slower (docs/performance.md, "Figures behind the code"). Our reading, not measured: the
# relay's vCPU, woken once more per request, halts for shorter and wakes faster for the next
# request. Under load one frame already carries the counts of many requests.


class BatchingRecorder:
    def __init__(self, send: Callable[[dict[str, Any]], None], channel: IPCChannel | None) -> None:
        self._send = send
        self._channel = channel
        self._counts: Counter[HttpKey] = Counter()
        self._seen = (0, 0)

    def record(self, method: str, route: str, status: int) -> None:
        if not self._counts:
            asyncio.get_running_loop().call_soon(self.flush)
        self._counts[(method, route, status)] += 1

    def flush(self) -> None:
        """Sends what was counted since the last report, if anything."""
        counts, self._counts = self._counts, Counter()
        rejected = dropped = 0
        if self._channel is not None:
            now = (self._channel.rejected_count, self._channel.dropped_count)
            rejected, dropped = now[0] - self._seen[0], now[1] - self._seen[1]
            self._seen = now
        if counts or rejected or dropped:
            self._send({"http": list(counts.items()), "rejected": rejected, "dropped": dropped})
