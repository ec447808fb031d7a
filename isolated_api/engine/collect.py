"""``collect``: the batching a plain main loop needs, in one call on its ``request_q``."""

from __future__ import annotations

import queue
import time
from typing import Any


def collect(request_q: Any, max_size: int = 32, max_wait: float = 0.002, timeout: float | None = None) -> list[Any]:
    """Up to ``max_size`` messages from ``request_q``, in queue order, for a loop that serves them
    together::

        while True:
            batch = collect(request_q, max_size=32, max_wait=0.002)
            requests = [m for m in batch if isinstance(m, Embed)]   # skip pings, CancelRequest...
            for request, vector in zip(requests, model.embed([r.text for r in requests])):
                response_q.put(Result(request.id, vector))

    Blocks up to ``timeout`` seconds (None: for ever) for a first message; then takes what is
    already queued and what arrives within ``max_wait`` seconds of that first message, stopping at
    ``max_size``. Returns ``[]`` when no first message came within ``timeout``. ``max_wait=0``
    takes only what is already queued. Never polls: each wait is a blocking ``get`` bounded by the
    time left. Messages are returned as they are, the framework's own (``CancelRequest``,
    ``HealthPing``) included."""
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be an integer >= 1, got {max_size!r}")
    if not max_wait >= 0:
        raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    try:
        batch = [request_q.get(timeout=timeout)]
    except queue.Empty:
        return []
    # From the first message: a loop that took long to come back here does not wait again.
    deadline = time.monotonic() + max_wait
    while len(batch) < max_size:
        try:
            batch.append(request_q.get_nowait())  # already queued: no clock, no wait
            continue
        except queue.Empty:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            batch.append(request_q.get(timeout=remaining))
        except queue.Empty:
            break
    return batch
