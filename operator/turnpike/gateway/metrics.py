"""The gateway's Prometheus families.

Gauges of held and queued requests are read from the live state at scrape
time (a collector), so they can never drift from it the way inc/dec pairs
on every error path could; the autoscaler reads the held count as queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from turnpike.gateway.buckets import bucket_edges

PREFIX = "turnpike_gateway"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Live counts: held per deployment, queued and in flight per (deployment, tier)."""

    held: Mapping[str, int] = field(default_factory=dict)
    queued: Mapping[tuple[str, str], int] = field(default_factory=dict)
    in_flight: Mapping[tuple[str, str], int] = field(default_factory=dict)


class _Live(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        now = self._snapshot()
        held = GaugeMetricFamily(
            f"{PREFIX}_held_requests",
            "Requests held for a deployment with no ready replica (count them as queue).",
            labels=["deployment"],
        )
        for deployment, count in sorted(now.held.items()):
            held.add_metric([deployment], count)
        queued = GaugeMetricFamily(
            f"{PREFIX}_queued_requests",
            "Requests waiting in the gateway's fair queue for a slot.",
            labels=["deployment", "tier"],
        )
        for (deployment, tier), count in sorted(now.queued.items()):
            queued.add_metric([deployment, tier], count)
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_in_flight_requests",
            "Requests the gateway has sent upstream and not yet finished.",
            labels=["deployment", "tier"],
        )
        for (deployment, tier), count in sorted(now.in_flight.items()):
            in_flight.add_metric([deployment, tier], count)
        yield from (held, queued, in_flight)


class GatewayMetrics:
    def __init__(
        self,
        slo_thresholds_s: Iterable[float] = (),
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.buckets = bucket_edges(slo_thresholds_s)
        labels = ["deployment", "tier"]
        self.admitted = Counter(
            f"{PREFIX}_admitted_requests",
            "Requests admitted to a deployment (sent upstream).",
            labels,
            registry=self.registry,
        )
        self.rejected = Counter(
            f"{PREFIX}_rejected_requests",
            "Requests refused by the gateway: reason shed (429), queue_full, queue_timeout, "
            "hold_full, hold_timeout (503).",
            [*labels, "reason"],
            registry=self.registry,
        )
        self.responses = Counter(
            f"{PREFIX}_responses",
            "Upstream responses relayed, by status class (2xx, 4xx, 5xx).",
            [*labels, "code"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            f"{PREFIX}_upstream_errors",
            "Upstream failures: connect, timeout, reset.",
            ["deployment", "kind"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a request waited in the gateway (held at zero replicas, then queued).",
            labels,
            buckets=self.buckets,
            registry=self.registry,
        )
        self.first_byte = Histogram(
            f"{PREFIX}_time_to_first_byte_seconds",
            "From the request's arrival to the first upstream response byte.",
            labels,
            buckets=self.buckets,
            registry=self.registry,
        )
        self.total = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "From the request's arrival to its last response byte.",
            labels,
            buckets=self.buckets,
            registry=self.registry,
        )

    def watch(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry.register(_Live(snapshot))
