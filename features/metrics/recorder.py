"""The worker's side: request counts gathered during one loop iteration go to the main process
in one frame (with the channel's rejection and drop counts since the last frame)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from features.ipc.channel import IPCChannel
from features.metrics.book import HttpKey


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
        counts, self._counts = self._counts, Counter()
        rejected = dropped = 0
        if self._channel is not None:
            now = (self._channel.rejected_count, self._channel.dropped_count)
            rejected, dropped = now[0] - self._seen[0], now[1] - self._seen[1]
            self._seen = now
        self._send({"http": list(counts.items()), "rejected": rejected, "dropped": dropped})
