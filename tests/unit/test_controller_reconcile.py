"""The ModelDeployment reconciler end to end on the in-memory API server
(tests/unit/fakekube.py), its cache fed by the fake's watch events as kopf feeds
it in production: what the reconciler decides, writes and reports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from tests.unit.builders import NAME, NAMESPACE, deployment, md, ready_pod
from tests.unit.builders import tier as tier_builder
from tests.unit.fakekube import FakeKube, cache_fed_by
from turnpike.autoscale.signal import CounterDelta, Observation
from turnpike.capacity.consumers import rolling
from turnpike.controller import autoscaler as autoscaler_module
from turnpike.controller import modeldeployment as reconciler_module
from turnpike.controller.autoscaler import Autoscaler, PodTarget
from turnpike.controller.capacity import CapacityGate
from turnpike.controller.metrics import Metrics
from turnpike.controller.modeldeployment import ModelDeploymentReconciler
from turnpike.kube import Kube
from turnpike.reconcile import plan as plan_module

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
KEY = (NAMESPACE, NAME)


def model_deployment(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    builder = md().spec(**spec)
    return (builder.with_status(**status) if status is not None else builder).build()


def settled_deployment(replicas: int, max_surge: int = 1) -> dict[str, Any]:
    """The child Deployment a previous reconcile left, rolled out and ready."""
    return deployment(replicas).max_surge(max_surge).build()


def tier(gpus: int) -> dict[str, Any]:
    return tier_builder(gpus).default().build()


def md_status(kube: FakeKube) -> dict[str, Any]:
    return kube.status("ModelDeployment", *KEY)


class QueueSource:
    """Stands in for the pod scrape: every ready pod reports the same queue."""

    queue_per_pod = 0.0

    def __init__(self, **_: Any) -> None:
        pass

    async def sample(self, pods: list[PodTarget]) -> Observation:
        names = tuple(p.name for p in pods)
        return Observation(
            time=NOW.timestamp(),
            queue=self.queue_per_pod * len(names),
            pods=names,
            queues=dict.fromkeys(names, self.queue_per_pod),
        )

    async def close(self) -> None:
        pass


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[QueueSource]]:
    monkeypatch.setattr(autoscaler_module, "PodScrapeSource", QueueSource)
    yield QueueSource


def reconcile(kube: FakeKube, *, with_tiers: bool, autoscaled: bool = False) -> float | None:
    """One reconcile of KEY, wired the way controller/operator.py wires it."""

    async def run() -> float | None:
        cache = cache_fed_by(kube)
        api = cast(Kube, kube)
        metrics = Metrics()
        scaler = Autoscaler(api, metrics, clock=NOW.timestamp) if autoscaled else None
        reconciler = ModelDeploymentReconciler(
            api,
            metrics,
            autoscaler=scaler,
            gate=CapacityGate(api, cache) if with_tiers else None,
            cache=cache,
            clock=lambda: NOW,
        )
        try:
            return await reconciler.reconcile(KEY)
        finally:
            if scaler is not None:
                await scaler.close()

    return asyncio.run(run())


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    (found,) = [c for c in status["conditions"] if c["type"] == type_]
    return found


# --- defect 1: nothing the core raises reaches the work queue ------------------------


@pytest.mark.parametrize("uri", ["pvc://Models/llama", "hf://org", "pvc://store/../etc"])
def test_a_stored_uri_the_renderer_cannot_use_becomes_degraded(uri: str) -> None:
    # Objects stored before the CRD learned these rules still reach the operator.
    kube = FakeKube()
    kube.add(model_deployment({"model": {"uri": uri}}))
    assert reconcile(kube, with_tiers=False) is not None
    degraded = condition(md_status(kube), "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert "model.uri" in degraded["message"]
    assert kube.applied == []


def test_an_unexpected_error_becomes_a_degraded_condition_and_a_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: Any, **__: Any) -> list[dict[str, Any]]:
        raise RuntimeError("renderer bug near s3://KEY:TOPSECRET@bucket/m")

    monkeypatch.setattr(plan_module, "desired_children", broken)
    kube = FakeKube()
    kube.add(model_deployment({"model": {"uri": "s3://bucket/m"}}))
    with caplog.at_level(logging.ERROR, logger=reconciler_module.__name__):
        again = reconcile(kube, with_tiers=False)
    assert again == 60.0  # looked at again at the next resync, not retried in a loop
    degraded = condition(md_status(kube), "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InternalError")
    assert "renderer bug" not in degraded["message"]  # details go to the log only
    assert "renderer bug" in caplog.text and "RuntimeError" in caplog.text
    assert "TOPSECRET" not in caplog.text
    assert [e["reason"] for e in kube.events] == ["InternalError"]


# --- defect 2: inline credentials are refused and never echoed -----------------------


@pytest.mark.parametrize(
    "uri", ["s3://KEY:TOPSECRET@bucket/path", "https://user:TOPSECRET@host/m.tar"]
)
def test_a_stored_uri_with_credentials_is_refused_and_never_echoed(
    uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    kube = FakeKube()
    kube.add(model_deployment({"model": {"uri": uri}}))
    with caplog.at_level(logging.DEBUG):
        reconcile(kube, with_tiers=False)
    degraded = condition(md_status(kube), "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert "model.credentials" in degraded["message"]
    assert kube.applied == []
    assert "TOPSECRET" not in kube.everything_written() + caplog.text


# --- defect 10: no surge past a full GPU budget --------------------------------------


def test_a_full_budget_rolls_one_replica_at_a_time_and_says_so() -> None:
    # Budget 8, 2 replicas of 4 GPUs: a surge pod would make 12.
    kube = FakeKube()
    kube.add(tier(8))
    spec = {"model": {"uri": "s3://b/m"}, "gpu": {"tensorParallelism": 4}, "replicas": 2}
    kube.add(model_deployment(spec, {"desiredReplicas": 2}))
    kube.add(settled_deployment(2))
    reconcile(kube, with_tiers=True)
    (deployment,) = [o for o in kube.applied if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    capacity = condition(md_status(kube), "CapacityAvailable")
    assert capacity["status"] == "True"
    assert "maxSurge 0" in capacity["message"]


def test_room_for_a_surge_pod_keeps_the_surge() -> None:
    kube = FakeKube()
    kube.add(tier(12))
    spec = {"model": {"uri": "s3://b/m"}, "gpu": {"tensorParallelism": 4}, "replicas": 2}
    kube.add(model_deployment(spec, {"desiredReplicas": 2}))
    kube.add(settled_deployment(2))
    reconcile(kube, with_tiers=True)
    (deployment,) = [o for o in kube.applied if o["kind"] == "Deployment"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "maxSurge" not in condition(md_status(kube), "CapacityAvailable")["message"]


# --- defect 11: status.lastScale reports what the tier granted -----------------------

AUTOSCALED = {
    "model": {"uri": "s3://b/m"},
    "minReplicas": 1,
    "maxReplicas": 8,
    "autoscaling": {"enabled": True},
}


def _autoscaled_at_four(kube: FakeKube, budget: int, queue: type[QueueSource]) -> None:
    kube.add(tier(budget))
    kube.add(model_deployment(AUTOSCALED, {"desiredReplicas": 4}))
    kube.add(settled_deployment(4))
    for i in range(4):
        kube.add(ready_pod(i))
    queue.queue_per_pod = 100.0  # far above target 4: the policy wants 8


def test_last_scale_records_the_replicas_the_tier_granted(queue: type[QueueSource]) -> None:
    kube = FakeKube()
    _autoscaled_at_four(kube, 6, queue)
    reconcile(kube, with_tiers=True, autoscaled=True)
    status = md_status(kube)
    assert status["desiredReplicas"] == 6
    assert (status["lastScale"]["fromReplicas"], status["lastScale"]["toReplicas"]) == (4, 6)
    assert "GPU budget 6" in status["lastScale"]["reason"]
    (deployment,) = [o for o in kube.applied if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 6
    # The autoscaler wanted 8: the budget is what stopped it, and status says so.
    capacity = condition(status, "CapacityAvailable")
    assert (capacity["status"], capacity["reason"]) == ("False", "BudgetExhausted")
    assert "6 of 8 replicas granted" in capacity["message"]


def test_a_scale_up_the_tier_blocks_is_not_recorded(queue: type[QueueSource]) -> None:
    kube = FakeKube()
    _autoscaled_at_four(kube, 4, queue)
    reconcile(kube, with_tiers=True, autoscaled=True)
    status = md_status(kube)
    assert status["desiredReplicas"] == 4
    assert "lastScale" not in status  # "4→8" never happened
    assert not [e for e in kube.events if e["reason"] in ("ScaledUp", "ScaledDown")]
    capacity = condition(status, "CapacityAvailable")
    assert (capacity["status"], capacity["reason"]) == ("False", "BudgetExhausted")


def test_a_rollout_without_surge_holds_no_extra_replica() -> None:
    # A Deployment rolled out with maxSurge 0 never runs more pods than replicas,
    # so the tier must not charge it the surge pod it will never create.
    rolling_out = settled_deployment(2)
    rolling_out["status"]["updatedReplicas"] = 1
    assert rolling(rolling_out)
    in_place = settled_deployment(2, max_surge=0)
    in_place["status"]["updatedReplicas"] = 1
    assert not rolling(in_place)
    assert not rolling(settled_deployment(2))


# --- the SLO meter ---------------------------------------------------------------------


class LatencySource(QueueSource):
    """Every ready pod completed 100 requests since its last scrape, at ``mean_ms`` each."""

    mean_ms = 50.0

    async def sample(self, pods: list[PodTarget]) -> Observation:
        observation = await super().sample(pods)
        delta = CounterDelta(100, 0, 100 * 10_000, 100 * self.mean_ms * 1000)
        return replace(observation, deltas={p.name: delta for p in pods})


SLO_SPEC = {"slo": {"thresholdMilliseconds": 120, "objectivePercent": 99, "windowMinutes": 60}}


def test_an_slo_without_autoscaling_is_measured_into_status_and_survives_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(autoscaler_module, "PodScrapeSource", LatencySource)
    kube = FakeKube()
    kube.add(model_deployment({"replicas": 2, **SLO_SPEC}))
    kube.add(settled_deployment(2))
    for i in range(2):
        kube.add(ready_pod(i))
    again = reconcile(kube, with_tiers=False, autoscaled=True)
    assert again == 2.0  # measured again at the next scrape interval
    slo = md_status(kube)["slo"]
    assert (slo["requests"], slo["attainment"], slo["method"]) == (200, "100.00%", "tritonMean")
    assert condition(md_status(kube), "SLOMet")["reason"] == "Met"
    applied = [c for c in kube.applied if c.get("kind") == "Deployment"]
    assert {c["spec"]["replicas"] for c in applied} <= {2}  # the SLO alone never scales

    # A new operator (a restart, a new leader) goes on from the stored window.
    LatencySource.mean_ms = 300.0
    try:
        reconcile(kube, with_tiers=False, autoscaled=True)
    finally:
        LatencySource.mean_ms = 50.0
    slo = md_status(kube)["slo"]
    assert (slo["requests"], slo["attainment"]) == (400, "50.00%")
    met = condition(md_status(kube), "SLOMet")
    assert (met["status"], met["reason"]) == ("False", "Burning")
    assert "SLOBurning" in [e["reason"] for e in kube.events]
