"""The capacity gate and the tier reconciler on the in-memory API server: racing
deployments, GPUs given back, tier status, and the delete path of renamed children."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from tests.unit.builders import deployment, md, tier
from tests.unit.fakekube import FakeKube, cache_fed_by
from turnpike.controller.cache import Cache
from turnpike.controller.capacity import CapacityGate
from turnpike.controller.capacitytier import CapacityTierReconciler
from turnpike.controller.metrics import Metrics
from turnpike.controller.modeldeployment import ModelDeploymentReconciler
from turnpike.kube import Kube

NS = "team-a"


def wired(kube: FakeKube) -> tuple[ModelDeploymentReconciler, CapacityGate, Metrics]:
    cache = cache_fed_by(kube)
    api = cast(Kube, kube)
    metrics = Metrics()
    gate = CapacityGate(api, cache, metrics=metrics)
    return ModelDeploymentReconciler(api, metrics, gate=gate, cache=cache), gate, metrics


def status(kube: FakeKube, name: str) -> dict[str, Any]:
    return kube.status("ModelDeployment", NS, name)


def capacity(kube: FakeKube, name: str) -> tuple[str, str]:
    (c,) = [c for c in status(kube, name)["conditions"] if c["type"] == "CapacityAvailable"]
    return c["status"], c["reason"]


def granted(kube: FakeKube, name: str) -> int:
    spec: dict[str, Any] = kube.stored("Deployment", NS, name)["spec"]
    return int(spec["replicas"])


def two_wanting_eight_gpus_each(budget: int) -> FakeKube:
    kube = FakeKube()
    kube.add(tier(budget).default().build())
    for name in ("a", "b"):
        kube.add(md(name).replicas(2).gpus(4).build())
    return kube


def test_two_deployments_racing_for_the_last_gpus_never_exceed_the_budget() -> None:
    kube = two_wanting_eight_gpus_each(12)
    reconciler, _, _ = wired(kube)

    async def race() -> None:
        await asyncio.gather(reconciler.reconcile((NS, "a")), reconciler.reconcile((NS, "b")))

    asyncio.run(race())
    # A fixed-size deployment is all or nothing: one gets 2 replicas, the other none.
    assert sorted([granted(kube, "a"), granted(kube, "b")]) == [0, 2]
    assert sorted([capacity(kube, "a")[1], capacity(kube, "b")[1]]) == [
        "Granted",
        "MinReplicasDoNotFit",
    ]


def test_gpus_given_back_by_a_deleted_deployment_go_to_the_next_one() -> None:
    kube = two_wanting_eight_gpus_each(8)
    reconciler, gate, metrics = wired(kube)

    async def scenario() -> None:
        await reconciler.reconcile((NS, "a"))
        await reconciler.reconcile((NS, "b"))
        assert (granted(kube, "a"), granted(kube, "b")) == (2, 0)
        assert gate.cache.accounts.held("pool") == {"*": 8}
        from turnpike.kube.resources import DEPLOYMENT, MODEL_DEPLOYMENT

        await kube.delete(MODEL_DEPLOYMENT, NS, "a")
        await kube.delete(DEPLOYMENT, NS, "a")  # the garbage collector's part
        assert gate.cache.accounts.held("pool") == {}
        await reconciler.reconcile((NS, "b"))
        assert granted(kube, "b") == 2

    asyncio.run(scenario())
    assert capacity(kube, "b") == ("True", "Granted")
    evaluations = metrics.registry.get_sample_value(
        "turnpike_capacity_evaluation_seconds_count", {"tier": "pool"}
    )
    assert evaluations == 3


def test_the_tier_reconciler_writes_its_status_once_then_nothing() -> None:
    kube = two_wanting_eight_gpus_each(12)
    reconciler, gate, metrics = wired(kube)
    tiers = CapacityTierReconciler(cast(Kube, kube), gate, metrics, min_interval_seconds=0)

    async def scenario() -> None:
        await reconciler.reconcile((NS, "a"))
        await tiers.reconcile("pool")
        writes = len(kube.status_patches) + len(kube.applied)
        await tiers.reconcile("pool")
        assert len(kube.status_patches) + len(kube.applied) == writes

    asyncio.run(scenario())
    tier_status = kube.status("CapacityTier", None, "pool")
    assert tier_status, "the tier reconciler wrote no status"
    assert kube.stored("PriorityClass", None, "turnpike-pool")["value"] > 0


def test_a_cache_accounts_each_consumer_once_whatever_the_event_order() -> None:
    cache = Cache()
    cache.tier_seen("ADDED", tier(16).default().build())
    running = deployment(2, owner="a").build()
    cache.child_seen("ADDED", running)  # the child's event can come first
    assert cache.accounts.held("pool") == {}
    cache.model_seen("ADDED", md("a").replicas(2).gpus(2).build())
    assert cache.accounts.held("pool") == {"*": 4}
    cache.model_seen("MODIFIED", md("a").replicas(2).gpus(2).build())
    assert cache.accounts.held("pool") == {"*": 4}
    rolling = deployment(2, owner="a").updated(1).build()
    rolling["metadata"]["resourceVersion"] = "60"
    cache.child_seen("MODIFIED", rolling)
    assert cache.accounts.held("pool") == {"*": 6}  # the surge pod holds a replica's GPUs
    status_only = tier(16).default().build()
    status_only["metadata"]["resourceVersion"] = "8"
    status_only["status"] = {"consumerCount": 1}
    cache.tier_seen("MODIFIED", status_only)  # the tier reconciler's own write
    assert cache.accounts.held("pool") == {"*": 6}
    not_default = tier(16).build()
    not_default["metadata"].update(resourceVersion="9", generation=2)
    cache.tier_seen("MODIFIED", not_default)  # a spec change: no longer the default
    assert cache.accounts.held("pool") == {}
    cache.model_seen("DELETED", md("a").build())
    assert cache.accounts.share((NS, "a")) is None


def test_a_renamed_deployment_is_deleted_once_its_successor_is_ready() -> None:
    kube = FakeKube()
    body = md().replicas(1).build()
    old = deployment(1).named("llama-0a1b2c3d").build()  # what an older version rendered
    kube.add(body, old)
    reconciler, _, _ = wired(kube)

    async def scenario() -> None:
        await reconciler.reconcile((NS, "llama"))
        assert ("Deployment", NS, "llama") in kube.objects
        assert ("Deployment", NS, "llama-0a1b2c3d") in kube.objects  # still serving
        kube.settle(NS, "llama")
        await reconciler.reconcile((NS, "llama"))

    asyncio.run(scenario())
    assert ("Deployment", NS, "llama-0a1b2c3d") not in kube.objects
    assert [e["reason"] for e in kube.events].count("Removed") == 1


def test_a_grant_in_flight_counts_even_if_an_older_watch_event_arrives_meanwhile() -> None:
    cache = Cache()
    cache.tier_seen("ADDED", tier(16).default().build())
    cache.model_seen("ADDED", md("a").replicas(4).gpus(2).build())
    running = deployment(1, owner="a").build()
    cache.child_seen("ADDED", running)
    assert cache.accounts.held("pool") == {"*": 2}
    scaling = deployment(4, owner="a").build()
    cache.granting((NS, "a"), scaling)  # decided under the lock, apply not answered yet
    assert cache.accounts.held("pool") == {"*": 8}
    late = deployment(1, owner="a").build()
    late["metadata"]["resourceVersion"] = "51"  # kcm's status write on the old spec
    cache.child_seen("MODIFIED", late)
    assert cache.accounts.held("pool") == {"*": 8}
    cache.granted((NS, "a"), None)  # the apply failed: what runs is the truth again
    assert cache.accounts.held("pool") == {"*": 2}


def test_a_priority_class_the_server_stored_needs_no_apply() -> None:
    """The API server omits globalDefault: false; comparing it as missing re-applied
    every tier's PriorityClass on every pass (seen in make bench-reconcile)."""
    from turnpike.api.capacitytier import CapacityTier
    from turnpike.capacity import render_priority_class
    from turnpike.reconcile.diff import needs_apply, with_hash

    wanted = with_hash(render_priority_class(CapacityTier.from_k8s(tier(8).build())))
    stored = {k: v for k, v in wanted.items() if k != "globalDefault"}
    assert wanted["globalDefault"] is False
    assert not needs_apply(wanted, stored)
    assert needs_apply(wanted, {**stored, "value": 1})
