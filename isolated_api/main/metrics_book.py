"""The metrics of one server, kept where every request passes: the main process.

HTTP workers send their per-route request counts to the relay in small batched frames; the relay
already counts rejections, drops, cancel notices and stream chunks as plain integers. A scrape of
``/metrics`` on any worker asks the main process, which renders everything from one registry, so
several workers give one consistent view. Counters the relay keeps anyway are read at scrape
time by a collector, costing nothing per request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from isolated_api.shared.metrics_report import HttpKey

logger = logging.getLogger("isolated_api.metrics")

# Distinct (method, route, status) label sets kept. A real app has a few per route; workers are
# not trusted with the main process's memory (a compromised one could send a new route name in
# every report), so past this bound counts go to one overflow series and a warning is logged once.
MAX_LABEL_SETS = 1000
OVERFLOW_KEY = ("OTHER", "(too many label sets)", "0")

_ROUND_TRIP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _FactsCollector(Collector):
    def __init__(self, facts: Callable[[], dict[str, Any]]) -> None:
        self._facts = facts

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: the facts may not exist yet when the book is made.
        return []

    def collect(self) -> Iterator[Metric]:
        facts = self._facts()
        pending = GaugeMetricFamily("isolated_api_pending_requests", "Requests awaiting a reply, server-wide")
        pending.add_metric([], facts.get("pending", 0))
        yield pending
        rejected = CounterMetricFamily(
            "isolated_api_rejected_requests", "Requests refused before reaching the main process", labels=["reason"]
        )
        for reason, key in (("max_pending", "rejected"), ("queue_full", "queue_full"), ("worker", "worker_rejected")):
            rejected.add_metric([reason], facts.get(key, 0))
        yield rejected
        dropped = CounterMetricFamily(
            "isolated_api_dropped_replies", "Replies that found no waiting request", labels=["where"]
        )
        dropped.add_metric(["main"], facts.get("dropped", 0))
        dropped.add_metric(["worker"], facts.get("worker_dropped", 0))
        yield dropped
        for name, key, doc in (
            ("isolated_api_forwarded_requests", "forwarded", "Requests put on request_q"),
            ("isolated_api_stream_chunks", "stream_chunks", "Stream chunks routed to workers"),
            ("isolated_api_cancel_notices", "cancel_notices", "CancelRequest messages put on request_q"),
            ("isolated_api_worker_restarts", "restarts", "HTTP workers replaced after dying"),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], facts.get(key, 0))
            yield family


class MetricsBook:
    def __init__(self, facts: Callable[[], dict[str, Any]] = dict) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "isolated_api_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._round_trip = Histogram(
            "isolated_api_ipc_round_trip_seconds",
            "From a request entering the relay to its (final) reply leaving it",
            buckets=_ROUND_TRIP_BUCKETS,
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self._label_sets: set[tuple[str, str, str]] = set()
        self._worker_counts = {"worker_rejected": 0, "worker_dropped": 0}
        self._facts = facts
        self._collectors: list[Collector] = []
        self.registry.register(_FactsCollector(self._all_facts))

    def _all_facts(self) -> dict[str, Any]:
        with self._lock:
            worker_counts = dict(self._worker_counts)
        return {**self._facts(), **worker_counts}

    def add_http(self, counts: Iterable[tuple[HttpKey, int]]) -> None:
        for (method, route, status), count in counts:
            self._requests.labels(*self._bounded((method, route, str(status)))).inc(count)

    def _bounded(self, key: tuple[str, str, str]) -> tuple[str, str, str]:
        with self._lock:
            if key in self._label_sets:
                return key
            if len(self._label_sets) < MAX_LABEL_SETS:
                self._label_sets.add(key)
                return key
            if OVERFLOW_KEY not in self._label_sets:
                self._label_sets.add(OVERFLOW_KEY)
                logger.warning(
                    "more than %d HTTP metric label sets; further ones are counted as %s", MAX_LABEL_SETS, OVERFLOW_KEY
                )
        return OVERFLOW_KEY

    def add_worker_counts(self, rejected: int, dropped: int) -> None:
        with self._lock:
            self._worker_counts["worker_rejected"] += rejected
            self._worker_counts["worker_dropped"] += dropped

    def add_collector(self, collector: Collector) -> None:
        """Renders ``collector`` too (an engine's batching metrics); the same one twice is harmless."""
        with self._lock:
            if any(known is collector for known in self._collectors):
                return
            self._collectors.append(collector)
        try:
            self.registry.register(collector)
        except ValueError as exc:  # its names are taken (a second engine on one server)
            logger.warning("metrics of a second engine not shown on /metrics: %s", exc)

    def observe_round_trip(self, seconds: float) -> None:
        self._round_trip.observe(seconds)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
