"""The ModelDeployment reconciler end to end on an in-memory API server.

The fake below is the least the reconciler needs (get, list, apply, status
patch, event create), with no server-side-apply semantics: these tests are
about what the reconciler decides and reports, not about the API server.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from turnpike.autoscale.signal import Observation
from turnpike.capacity.consumers import rolling
from turnpike.controller import autoscaler as autoscaler_module
from turnpike.controller import modeldeployment as reconciler_module
from turnpike.controller.autoscaler import Autoscaler, PodTarget
from turnpike.controller.cache import Cache
from turnpike.controller.capacity import CapacityGate
from turnpike.controller.metrics import Metrics
from turnpike.controller.modeldeployment import ModelDeploymentReconciler
from turnpike.kube import Kube
from turnpike.kube.resources import Resource

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
KEY = ("team-a", "llama")


class FakeKube:
    """Objects by (kind, namespace, name); records every write."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.applied: list[dict[str, Any]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._version = 100

    def add(self, obj: dict[str, Any]) -> None:
        metadata = obj["metadata"]
        self.objects[(obj["kind"], metadata.get("namespace"), metadata["name"])] = obj

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    async def get(
        self, resource: Resource, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        found = self.objects.get((resource.kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj)
            for (kind, ns, _), obj in self.objects.items()
            if kind == resource.kind and namespace in (None, ns)
        ]

    async def apply(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.applied.append(copy.deepcopy(obj))
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = self._next_version()
        self.add(stored)
        return copy.deepcopy(stored)

    async def patch_status(
        self, resource: Resource, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.status_patches.append(copy.deepcopy(status))
        obj = self.objects[(resource.kind, namespace, name)]
        merged = {**obj.get("status", {}), **status}
        obj["status"] = {k: v for k, v in merged.items() if v is not None}
        obj["metadata"]["resourceVersion"] = self._next_version()
        return copy.deepcopy(obj)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.events.append(copy.deepcopy(obj))
        return obj

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = self.objects[("ModelDeployment", *KEY)].get("status", {})
        return found

    def everything_written(self) -> str:
        return json.dumps(
            [self.applied, self.status_patches, self.events, self.objects.keys()], default=str
        )


def model_deployment(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "namespace": KEY[0],
            "name": KEY[1],
            "uid": "uid-llama",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2026-11-01T00:00:00Z",
        },
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def settled_deployment(replicas: int, max_surge: int = 1) -> dict[str, Any]:
    """The child Deployment a previous reconcile left, rolled out and ready."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "namespace": KEY[0],
            "name": KEY[1],
            "generation": 3,
            "resourceVersion": "50",
            "ownerReferences": [
                {"kind": "ModelDeployment", "name": KEY[1], "uid": "uid-llama", "controller": True}
            ],
        },
        "spec": {
            "replicas": replicas,
            "strategy": {"rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": 0}},
        },
        "status": {
            "observedGeneration": 3,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        },
    }


def tier(gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "CapacityTier",
        "metadata": {"name": "pool", "resourceVersion": "7"},
        "spec": {"class": "on-demand", "gpuBudget": {"*": gpus}, "default": True},
    }


def ready_pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": KEY[0], "name": f"llama-{i}"},
        "status": {
            "phase": "Running",
            "podIP": f"127.0.0.{i + 10}",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


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
        cache = Cache()
        for (kind, _, _), obj in list(kube.objects.items()):
            if kind == "ModelDeployment":
                cache.model_seen("ADDED", obj)
            elif kind == "CapacityTier":
                cache.tier_seen("ADDED", obj)
            elif kind == "Deployment":
                cache.child_seen("ADDED", obj)
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
    degraded = condition(kube.status(), "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert "model.uri" in degraded["message"]
    assert kube.applied == []


def test_an_unexpected_error_becomes_a_degraded_condition_and_a_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: Any, **__: Any) -> list[dict[str, Any]]:
        raise RuntimeError("renderer bug near s3://KEY:TOPSECRET@bucket/m")

    monkeypatch.setattr(reconciler_module, "desired_children", broken)
    kube = FakeKube()
    kube.add(model_deployment({"model": {"uri": "s3://bucket/m"}}))
    with caplog.at_level(logging.ERROR, logger=reconciler_module.__name__):
        again = reconcile(kube, with_tiers=False)
    assert again == 60.0  # looked at again at the next resync, not retried in a loop
    degraded = condition(kube.status(), "Degraded")
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
    degraded = condition(kube.status(), "Degraded")
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
    capacity = condition(kube.status(), "CapacityAvailable")
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
    assert "maxSurge" not in condition(kube.status(), "CapacityAvailable")["message"]


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
    status = kube.status()
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
    status = kube.status()
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
