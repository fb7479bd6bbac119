"""The operator's own Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

T = TypeVar("T")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "turnpike_reconcile_total",
            "Reconciles by kind and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "turnpike_reconcile_duration_seconds",
            "Time of one reconcile.",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.api_writes = Counter(
            "turnpike_api_writes_total",
            "Write requests sent to the API server.",
            ["verb", "resource"],
            registry=self.registry,
        )
        self.internal_errors = Counter(
            "turnpike_internal_errors_total",
            "Reconciles that a bug in the operator stopped (reported as Degraded=True).",
            ["kind"],
            registry=self.registry,
        )
        self.children_applied = Counter(
            "turnpike_children_applied_total",
            "Server-side applies of children.",
            ["kind"],
            registry=self.registry,
        )
        self.workqueue_depth = Gauge(
            "turnpike_workqueue_depth", "Objects waiting to be reconciled.", registry=self.registry
        )
        self.queue_depth = Gauge(
            "turnpike_queue_depth",
            "Triton queue per replica as the autoscaler read it.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.desired_replicas = Gauge(
            "turnpike_desired_replicas",
            "Replicas the autoscaler asked for.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.ready_replicas = Gauge(
            "turnpike_ready_replicas",
            "Replicas serving (ready pods with an IP).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.scaling_decisions = Counter(
            "turnpike_scaling_decisions_total",
            "Autoscaler decisions by direction.",
            ["direction"],
            registry=self.registry,
        )
        self.capacity_evaluation_seconds = Histogram(
            "turnpike_capacity_evaluation_seconds",
            "CPU time of one capacity evaluation under its tier's lock (reading the "
            "tier's sums and allocating), excluding the wait for the lock and the applies.",
            ["tier"],
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
            registry=self.registry,
        )
        self.leader = Gauge(
            "turnpike_leader",
            "1 while this replica holds the leader lease.",
            registry=self.registry,
        )

    async def measured(self, kind: str, reconcile: Callable[[], Awaitable[T]]) -> T:
        """Count and time one reconcile of kind; an exception counts as an error."""
        started = time.monotonic()
        result = "error"
        try:
            value = await reconcile()
            result = "ok"
            return value
        finally:
            self.reconciles.labels(kind, result).inc()
            self.reconcile_seconds.labels(kind).observe(time.monotonic() - started)
