"""The engine's batching metrics: batch sizes, how long members waited for their batch, batches
and steps run, step time. Kept in the engine (one ``observe`` per batch or step, never per request)
and rendered by whichever ``/metrics`` registers them: a server whose relay reads this engine's
``response_q`` in this process does so when the first batched request arrives (``Engine`` finds it
through the queue, as ``ReplyBatcher`` does). ``engine.metrics`` is a Prometheus collector, so a
program can also register it in a registry of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class EngineMetrics(Collector):
    """A Prometheus collector of one engine's batchers and steppers, labelled by handler name."""

    def __init__(self) -> None:
        # registry=None: not in the process-wide default registry; whoever renders registers us.
        self.batch_size = Histogram(
            "isolated_api_engine_batch_size",
            "Requests per call of an engine.batch handler, or streams per step of an engine.steps stepper",
            ["handler"],
            buckets=_SIZE_BUCKETS,
            registry=None,
        )
        self.batch_wait = Histogram(
            "isolated_api_engine_batch_wait_seconds",
            "From a batch's first request reaching the engine to the handler's call (max_wait and queueing)",
            ["handler"],
            buckets=_WAIT_BUCKETS,
            registry=None,
        )
        self.batches = Counter(
            "isolated_api_engine_batches",
            "Calls of engine.batch handlers (rate() gives batches per second)",
            ["handler"],
            registry=None,
        )
        self.step_time = Histogram(
            "isolated_api_engine_step_seconds",
            "Time of one step() of an engine.steps stepper",
            ["handler"],
            buckets=_STEP_BUCKETS,
            registry=None,
        )
        self.steps = Counter(
            "isolated_api_engine_steps", "Steps run by engine.steps steppers", ["handler"], registry=None
        )
        self._batch_children: dict[str, tuple[Any, Any, Any]] = {}

    def observe_batch(self, handler: str, size: int, waited: float) -> None:
        # The labelled children looked up once per handler: labels() costs more than observe().
        children = self._batch_children.get(handler)
        if children is None:
            children = (self.batch_size.labels(handler), self.batch_wait.labels(handler), self.batches.labels(handler))
            self._batch_children[handler] = children
        size_of, wait_of, count_of = children
        size_of.observe(size)
        wait_of.observe(max(waited, 0.0))
        count_of.inc()

    def observe_step(self, handler: str, size: int, seconds: float) -> None:
        self.batch_size.labels(handler).observe(size)
        self.step_time.labels(handler).observe(seconds)
        self.steps.labels(handler).inc()

    def collect(self) -> Iterator[Metric]:
        for metric in (self.batch_size, self.batch_wait, self.batches, self.step_time, self.steps):
            yield from metric.collect()
