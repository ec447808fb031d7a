"""Where an ``Engine`` meets the server it serves, if that server runs in this process.

The two are built apart (``Engine(request_q, response_q)``, ``.subprocess.with_ipc(request_q,
response_q)``) and never hold each other; the response queue they share is the meeting point:
the relay that reads it leaves a handle on that queue object while it runs (``relay_reading``,
the way ``ReplyBatcher`` finds it). A request a batcher or stepper gets came through that relay, so
by then it is running (it is looked up at each request until found: an attribute lookup). Two things are
done there, once per batcher or stepper:

- warn when the server can never fill a batch: the relay bounds the requests awaiting replies
  server-wide at ``max_pending`` (each HTTP worker admits up to ``max_pending`` too, but the
  relay's bound is the one that holds for all of them together), so ``max_pending`` below
  ``max_batch_size`` caps every batch (Ray Serve's issue #43288);
- show the engine's batching metrics on the server's ``/metrics``.

An engine behind a relay in another process (a user's own forwarding) meets nothing: no warning,
and its metrics stay in ``engine.metrics`` for a registry of the program's own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from isolated_api.main.queue_readers import relay_reading

if TYPE_CHECKING:
    from isolated_api.engine.group import Group
    from isolated_api.engine.metrics import EngineMetrics

logger = logging.getLogger("isolated_api.engine")


def meet_server(response_q: Any, group: Group, metrics: EngineMetrics) -> bool:
    """Warns and registers the metrics if the server's relay reads ``response_q`` in this process;
    True if it does (then once is enough)."""
    relay = relay_reading(response_q)
    if relay is None:
        return False
    capacity = group.capacity
    bound = relay.max_pending
    if bound is not None and bound < capacity:
        logger.warning(
            "%s takes up to %d requests at once, but the server admits at most max_pending=%d awaiting "
            "replies (over all its HTTP workers): it can never fill; raise .subprocess.with_max_pending() "
            "to at least %d",
            group.name,
            capacity,
            bound,
            capacity,
        )
    if relay.add_collector is not None:
        relay.add_collector(metrics)
    return True
