"""The operator's own Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from turnpike.capacity.meter import RequestsRow, SeriesRow

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
        self.slo_attainment = Gauge(
            "turnpike_slo_attainment_percent",
            "Requests within the SLO's threshold over its window, in percent (estimate; "
            "status.slo.method says how).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.slo_objective = Gauge(
            "turnpike_slo_objective_percent",
            "The SLO's objective, in percent of requests.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.slo_burn_rate = Gauge(
            "turnpike_slo_burn_rate",
            "Error budget spending over the window (5m, 1h) in multiples of the sustainable rate.",
            ["namespace", "name", "window"],
            registry=self.registry,
        )
        self.slo_budget_remaining = Gauge(
            "turnpike_slo_error_budget_remaining_percent",
            "Share of the SLO window's error budget not yet spent (negative: overspent).",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "turnpike_leader",
            "1 while this replica holds the leader lease.",
            registry=self.registry,
        )
        self.gpu_hour_price = Gauge(
            "turnpike_tier_gpu_hour_price",
            "A CapacityTier's spec.pricePerGpuHour per pool, in its currency: "
            "GPU-hours × this is the tier's cost.",
            ["tier", "product", "currency"],
            registry=self.registry,
        )
        self.usage = UsageCollector()
        self.registry.register(self.usage)

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


@dataclass(frozen=True)
class UsageReading:
    """What the GPU meter holds at one moment (see turnpike.capacity.meter)."""

    series: Iterable[SeriesRow] = ()
    requests: Iterable[RequestsRow] = ()


USAGE_LABELS = ["namespace", "modeldeployment", "tier", "product"]


class UsageCollector(Collector):
    """GPU-seconds granted and ready, and requests served, as counters read from the
    GPU meter when scraped. The meter integrates exactly between events, so a scrape
    sees the integral up to that moment (a Counter bumped at events would lag until the
    next one), and after a restart the values continue from what status stored."""

    def __init__(self) -> None:
        self.read: Callable[[], UsageReading] = UsageReading

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        granted, ready, served = self._families()
        reading = self.read()
        for row in reading.series:
            labels = [row.namespace, row.name, row.tier, row.product]
            granted.add_metric(labels, row.granted_seconds)
            ready.add_metric(labels, row.ready_seconds)
        for requests in reading.requests:
            served.add_metric([requests.namespace, requests.name], requests.requests)
        return [granted, ready, served]

    @staticmethod
    def _families() -> list[CounterMetricFamily]:
        return [
            CounterMetricFamily(
                "turnpike_gpu_seconds_granted",
                "GPU-seconds granted: replicas the operator granted × GPUs per replica, "
                "integrated over time.",
                labels=USAGE_LABELS,
            ),
            CounterMetricFamily(
                "turnpike_gpu_seconds_ready",
                "GPU-seconds of ready pods (Ready=True, not terminating), integrated over time.",
                labels=USAGE_LABELS,
            ),
            CounterMetricFamily(
                "turnpike_requests_served",
                "Requests the pods completed (Triton's success and failure counters), "
                "counted between the autoscaler's scrapes.",
                labels=["namespace", "modeldeployment"],
            ),
        ]
