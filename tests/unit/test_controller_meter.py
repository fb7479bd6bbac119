"""The GPU meter in the operator, on the in-memory API server: counters that follow
the pod watch between reconciles, status that carries them across a restart
without counting anything twice, and the tier's last 24 hours."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from tests.unit.builders import NAME, NAMESPACE, md, ready_pod, tier
from tests.unit.fakekube import FakeKube, cache_fed_by
from turnpike.autoscale.signal import CounterDelta, Observation
from turnpike.autoscale.sources import PodTarget
from turnpike.controller import autoscaler as autoscaler_module
from turnpike.controller.autoscaler import Autoscaler
from turnpike.controller.capacity import CapacityGate
from turnpike.controller.capacitytier import CapacityTierReconciler
from turnpike.controller.metering import GpuMeter
from turnpike.controller.metrics import Metrics
from turnpike.controller.modeldeployment import ModelDeploymentReconciler
from turnpike.kube import Kube

T0 = 1_800_000_000.0  # epoch seconds, a whole hour
KEY = (NAMESPACE, NAME)
LABELS = {"namespace": NAMESPACE, "modeldeployment": NAME, "tier": "pool", "product": "*"}


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    i: int, ready_since: float | None, *, not_ready_since: float | None = None
) -> dict[str, Any]:
    """A pod of the deployment holding one GPU, Ready since ``ready_since`` (or not)."""
    body = ready_pod(i)
    body["metadata"]["resourceVersion"] = str(100 + i)
    body["spec"] = {
        "containers": [{"name": "triton", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]
    }
    if ready_since is None:
        body["status"]["conditions"] = [
            {
                "type": "Ready",
                "status": "False",
                "lastTransitionTime": rfc3339(not_ready_since or T0),
            }
        ]
    else:
        body["status"]["conditions"][0]["lastTransitionTime"] = rfc3339(ready_since)
    return body


class Operator:
    """One operator process, wired as controller/operator.py wires it."""

    def __init__(self, kube: FakeKube, clock: Clock, scrape: bool = False) -> None:
        self.kube, self.clock = kube, clock
        self.cache = cache_fed_by(kube)
        self.meter = GpuMeter(self.cache, clock=clock)
        self.meter.attach()
        self.metrics = Metrics()
        self.metrics.usage.read = self.meter.reading
        api = cast(Kube, kube)
        gate = CapacityGate(api, self.cache, metrics=self.metrics)
        self.autoscaler = (
            Autoscaler(api, self.metrics, clock=clock, cache=self.cache) if scrape else None
        )
        self.models = ModelDeploymentReconciler(
            api,
            self.metrics,
            autoscaler=self.autoscaler,
            gate=gate,
            cache=self.cache,
            clock=clock.utc,
            meter=self.meter,
        )
        self.tiers = CapacityTierReconciler(
            api, gate, self.metrics, min_interval_seconds=0, clock=clock.utc, meter=self.meter
        )
        self.cache.expect_pods((None,))

    def list_pods(self, *pods: dict[str, Any]) -> None:
        """The pod reflector's first LIST lands."""
        self.cache.replace_pods(list(pods))

    def reconcile(self, at: float) -> None:
        self.clock.now = at
        asyncio.run(self.models.reconcile(KEY))

    def reconcile_tier(self, at: float) -> dict[str, Any]:
        self.clock.now = at
        asyncio.run(self.tiers.reconcile("pool"))
        usage: dict[str, Any] = self.kube.status("CapacityTier", None, "pool")["usage"]
        return usage

    def counters(self, at: float) -> tuple[float | None, float | None]:
        """(GPU-seconds granted, GPU-seconds ready) as /metrics shows them at ``at``."""
        self.clock.now = at
        registry = self.metrics.registry
        return (
            registry.get_sample_value("turnpike_gpu_seconds_granted_total", LABELS),
            registry.get_sample_value("turnpike_gpu_seconds_ready_total", LABELS),
        )


def fleet() -> FakeKube:
    kube = FakeKube()
    kube.add(tier(8).default().build(), md().replicas(2).build())
    return kube


def stored_usage(kube: FakeKube) -> dict[str, Any]:
    usage: dict[str, Any] = kube.status("ModelDeployment", *KEY)["usage"]
    return usage


def test_counters_follow_the_pods_ready_transitions_between_reconciles() -> None:
    kube = fleet()
    op = Operator(kube, Clock())
    op.list_pods()
    op.reconcile(T0)  # grants 2 replicas × 1 GPU
    assert op.counters(T0) == (0.0, 0.0)
    assert stored_usage(kube)["asOf"] == "2027-01-15T08:00:00.000Z"

    op.clock.now = T0 + 10
    op.cache.pod_seen("ADDED", pod(0, T0 + 10))
    op.clock.now = T0 + 20
    op.cache.pod_seen("ADDED", pod(1, T0 + 20))
    assert op.counters(T0 + 70) == (140.0, 60 + 50)  # no reconcile in between
    op.clock.now = T0 + 80
    op.cache.pod_seen("MODIFIED", pod(0, None, not_ready_since=T0 + 80))
    assert op.counters(T0 + 100) == (200.0, 70 + 80)

    writes = len(kube.status_patches)
    op.reconcile(T0 + 100)  # 100 s since the stored totals: written
    assert len(kube.status_patches) == writes + 1
    usage = stored_usage(kube)
    assert (usage["gpuSecondsGranted"], usage["gpuSecondsReady"]) == (200.0, 150.0)
    assert usage["series"] == [
        {"tier": "pool", "product": "*", "gpuSecondsGranted": 200.0, "gpuSecondsReady": 150.0}
    ]
    op.reconcile(T0 + 110)  # nothing else changed and the totals are fresh: no write
    assert len(kube.status_patches) == writes + 1


def run_until_restart(kube: FakeKube) -> None:
    """Pods 0 and 1 turn Ready at T0+10 and T0+20, pod 0 stops being ready at T0+80,
    status stores the totals at T0+100; the operator stops at T0+110."""
    op = Operator(kube, Clock())
    op.list_pods()
    op.reconcile(T0)
    for at, event, body in (
        (T0 + 10, "ADDED", pod(0, T0 + 10)),
        (T0 + 20, "ADDED", pod(1, T0 + 20)),
        (T0 + 80, "MODIFIED", pod(0, None, not_ready_since=T0 + 80)),
    ):
        op.clock.now = at
        op.cache.pod_seen(event, body)
    op.reconcile(T0 + 100)
    assert stored_usage(kube)["asOf"] == "2027-01-15T08:01:40.000Z"


# What an operator that never stopped would count by T0+130: granted 2 GPUs for
# 130 s; ready pod 0 for 70 s, pod 1 for 110 s, pod 2 (Ready at T0+120) for 10 s.
UNINTERRUPTED = (260.0, 70.0 + 110 + 10)
PODS_AT_RESTART = (
    pod(0, None, not_ready_since=T0 + 80),
    pod(1, T0 + 20),
    pod(2, T0 + 120),  # came up while no operator ran
)


def test_a_restart_resumes_from_status_and_fills_the_gap_without_double_counting() -> None:
    kube = fleet()
    run_until_restart(kube)
    op = Operator(kube, Clock(T0 + 130))
    op.list_pods(*PODS_AT_RESTART)
    op.reconcile(T0 + 130)
    assert op.counters(T0 + 130) == UNINTERRUPTED
    # From here on only what happens after: 2 granted and 2 ready GPUs for 1 s.
    op.reconcile(T0 + 131)
    assert op.counters(T0 + 131) == (UNINTERRUPTED[0] + 2, UNINTERRUPTED[1] + 2)
    # A second restart from the same stored totals still adds the gap only once.
    again = Operator(kube, Clock(T0 + 131))
    again.list_pods(*PODS_AT_RESTART)
    again.reconcile(T0 + 131)
    assert again.counters(T0 + 131) == (UNINTERRUPTED[0] + 2, UNINTERRUPTED[1] + 2)


def test_a_restart_that_reconciles_before_the_pods_are_listed_fills_the_gap_when_they_are() -> None:
    kube = fleet()
    run_until_restart(kube)
    stored = stored_usage(kube)
    op = Operator(kube, Clock())
    op.reconcile(T0 + 130)  # the pod LIST has not landed yet
    assert stored_usage(kube) == stored  # no total missing the ready gap is written
    assert op.counters(T0 + 130)[0] == UNINTERRUPTED[0]
    op.clock.now = T0 + 135
    op.list_pods(*PODS_AT_RESTART)
    assert op.counters(T0 + 135) == (UNINTERRUPTED[0] + 10, UNINTERRUPTED[1] + 10)
    op.reconcile(T0 + 140)
    assert stored_usage(kube)["gpuSecondsReady"] == UNINTERRUPTED[1] + 20


def test_a_deleted_deployment_stops_counting() -> None:
    kube = fleet()
    op = Operator(kube, Clock())
    op.list_pods()
    op.reconcile(T0)
    from turnpike.kube.resources import MODEL_DEPLOYMENT

    op.clock.now = T0 + 50
    asyncio.run(kube.delete(MODEL_DEPLOYMENT, *KEY))
    assert op.counters(T0 + 100) == (None, None)


def test_the_tier_shows_its_last_24_hours_and_keeps_them_across_a_restart() -> None:
    kube = fleet()
    op = Operator(kube, Clock())
    op.list_pods()
    op.reconcile(T0)
    usage = op.reconcile_tier(T0 + 1800)  # 2 GPUs for half an hour of a budget of 8
    assert usage["pools"] == [
        {"pool": "*", "gpuHours": 1.0, "budgetGpuHours": 4.0, "utilizationPercent": 25.0}
    ]
    assert usage["windowHours"] == 0.5 and usage["summary"] == "*=1h (25%)"

    restarted = Operator(kube, Clock(T0 + 2700))
    restarted.list_pods()
    restarted.reconcile(T0 + 2700)
    usage = restarted.reconcile_tier(T0 + 2700)
    assert usage["pools"][0]["gpuHours"] == 1.5  # 2 GPUs for 45 minutes, gap included
    assert usage["windowHours"] == 0.75


class CompletedSource:
    """Stands in for the pod scrape: each ready pod completed 100 requests since its
    last scrape."""

    def __init__(self, **_: Any) -> None:
        pass

    async def sample(self, pods: list[PodTarget]) -> Observation:
        names = tuple(p.name for p in pods)
        delta = CounterDelta(90, 10, 0, 0)
        return replace(
            Observation(time=T0, queue=0, pods=names, queues=dict.fromkeys(names, 0.0)),
            deltas={n: delta for n in names},
        )

    async def close(self) -> None:
        pass


def test_requests_served_are_the_completed_deltas_of_each_scrape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(autoscaler_module, "PodScrapeSource", CompletedSource)
    kube = FakeKube()
    kube.add(tier(8).default().build(), md().autoscaled(2, 2).build())
    op = Operator(kube, Clock(), scrape=True)
    op.list_pods(pod(0, T0 - 5), pod(1, T0 - 5))
    op.reconcile(T0)
    op.reconcile(T0 + 2)
    op.reconcile(T0 + 2.5)  # within the scrape interval: the last reading, not counted again
    served = op.metrics.registry.get_sample_value(
        "turnpike_requests_served_total", {"namespace": NAMESPACE, "modeldeployment": NAME}
    )
    assert served == 2 * 2 * 100
    assert op.autoscaler is not None
    asyncio.run(op.autoscaler.close())
