"""A CapacityTier's status, the tier a deployment resolves to, and deletion protection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from turnpike.api.capacitytier import MAX_LISTED_CONSUMERS, CapacityTier, CapacityTierStatus
from turnpike.capacity.ledger import Consumer
from turnpike.capacity.protection import TIER_FINALIZER, may_release
from turnpike.capacity.tierstatus import resolve_tier, summary, tier_status

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
NOW = "2026-03-01T00:00:00Z"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def tier(name: str = "gpus", *, status: dict[str, Any] | None = None, **spec: Any) -> CapacityTier:
    spec.setdefault("class", "reserved")
    spec.setdefault("gpuBudget", {H100: 16, "*": 4})
    metadata: dict[str, Any] = {"name": name, "generation": 7}
    if "deletionTimestamp" in spec:
        metadata["deletionTimestamp"] = spec.pop("deletionTimestamp")
    body: dict[str, Any] = {"metadata": metadata, "spec": spec}
    if status is not None:
        body["status"] = status
    return CapacityTier.from_k8s(body)


def consumer(name: str, age: int = 0, **fields: Any) -> Consumer:
    fields.setdefault("gpus_per_replica", 1)
    fields.setdefault("desired_replicas", 1)
    return Consumer(namespace="ml", name=name, created_at=T0 + timedelta(minutes=age), **fields)


def conditions(status: CapacityTierStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_status_of_a_busy_tier() -> None:
    consumers = [
        consumer("llama", product=H100, gpus_per_replica=8, desired_replicas=3,
                 current_replicas=1),
        consumer("embed", age=1, desired_replicas=2),
        consumer("a100", age=2, product=A100, gpus_per_replica=2, desired_replicas=1),
    ]  # fmt: skip
    status = tier_status(tier(), consumers, {H100: 8}, now=NOW)
    assert status.observed_generation == 7
    assert (status.priority, status.priority_class_name) == (900_000, "turnpike-gpus")
    assert status.budget == {"*": 4, H100: 16}
    assert status.granted == {"*": 4, H100: 16}
    assert status.free == {"*": 0, H100: 0}
    assert status.in_use == {H100: 8}
    assert status.budget_summary == f"*=4, {H100}=16"
    assert status.free_summary == f"*=0, {H100}=0"
    rows = [(r.name, r.pool, r.replicas, r.gpus, r.limited) for r in status.consumers]
    assert rows == [
        ("llama", H100, 2, 16, True),
        ("embed", "*", 2, 2, False),
        ("a100", "*", 1, 2, False),
    ]
    assert conditions(status) == {
        "Ready": ("True", "Accounted"),
        "Degraded": ("False", "AsExpected"),
        "Saturated": ("True", "BudgetExhausted"),
    }
    saturated = next(c for c in status.conditions if c.type == "Saturated")
    assert "1 ModelDeployment got fewer" in saturated.message and "ml/llama" in saturated.message
    assert all(c.observed_generation == 7 for c in status.conditions)
    # Serialises as the CRD expects.
    assert status.to_k8s()["consumers"][0] == {
        "namespace": "ml", "name": "llama", "product": H100, "pool": H100,
        "replicas": 2, "gpus": 16, "limited": True,
    }  # fmt: skip


def test_empty_tier() -> None:
    status = tier_status(tier(), [], {}, now=NOW)
    assert status.granted == {} and status.granted_summary == "none"
    assert status.free == {"*": 4, H100: 16}
    assert status.consumers == []
    assert conditions(status)["Saturated"] == ("False", "WithinBudget")


def test_overcommit_is_degraded_not_revoked() -> None:
    consumers = [consumer("big", gpus_per_replica=4, desired_replicas=2, current_replicas=2)]
    status = tier_status(tier(gpuBudget={"*": 4}), consumers, {"*": 8}, now=NOW)
    assert status.consumers[0].replicas == 2
    assert status.granted == {"*": 8} and status.free == {"*": 0}
    assert conditions(status)["Degraded"] == ("True", "Overcommitted")
    assert conditions(status)["Ready"] == ("True", "Accounted")


def test_default_conflict_is_reported_on_every_default_tier() -> None:
    a = tier("a", default=True)
    status = tier_status(a, [], {}, now=NOW, default_tiers=["a", "b"])
    assert conditions(status)["Ready"] == ("False", "DefaultConflict")
    assert conditions(status)["Degraded"] == ("True", "DefaultConflict")
    degraded = next(c for c in status.conditions if c.type == "Degraded")
    assert "b" in degraded.message
    # A tier that is not a default is not part of the conflict.
    other = tier_status(tier("c"), [], {}, now=NOW, default_tiers=["a", "b"])
    assert conditions(other)["Ready"] == ("True", "Accounted")
    alone = tier_status(a, [], {}, now=NOW, default_tiers=["a"])
    assert conditions(alone)["Ready"] == ("True", "Accounted")


def test_terminating_tier() -> None:
    t = tier(deletionTimestamp="2026-02-01T00:00:00Z")
    status = tier_status(t, [consumer("m", current_replicas=1)], {}, now=NOW)
    assert conditions(status)["Ready"] == ("False", "Terminating")


def test_transition_times_survive_unchanged_conditions() -> None:
    first = tier_status(tier(), [], {}, now="2026-01-01T00:00:00Z")
    stored = tier(status=first.to_k8s())
    second = tier_status(stored, [consumer("m", desired_replicas=99)], {}, now=NOW)
    times = {c.type: c.last_transition_time for c in second.conditions}
    assert times["Ready"] == "2026-01-01T00:00:00Z"  # still True
    assert times["Saturated"] == NOW  # flipped to True


def test_summary() -> None:
    assert summary({}) == "none"
    assert summary({H100: 16, "*": 8, A100: 0}) == f"*=8, {A100}=0, {H100}=16"


# --- resolve_tier --------------------------------------------------------------


def test_resolve_by_name() -> None:
    tiers = [tier("spot", default=True), tier("reserved")]
    found = resolve_tier("reserved", tiers)
    assert found.tier is not None and found.tier.name == "reserved"
    missing = resolve_tier("gold", tiers)
    assert (missing.tier, missing.reason) == (None, "TierNotFound")


def test_resolve_default() -> None:
    chosen = resolve_tier(None, [tier("spot", default=True), tier("reserved")])
    assert chosen.tier is not None and chosen.tier.name == "spot"
    assert resolve_tier(None, [tier("reserved")]).reason == "NoDefaultTier"
    conflict = resolve_tier(None, [tier("b", default=True), tier("a", default=True)])
    assert (conflict.tier, conflict.reason) == (None, "DefaultConflict")
    assert "a, b" in conflict.message


# --- deletion protection -------------------------------------------------------


def test_finalizer_is_released_only_without_consumers() -> None:
    assert TIER_FINALIZER == "turnpike.dev/capacity-tier-protection"
    assert may_release([]) == (True, "no ModelDeployment uses the tier")
    ok, message = may_release([consumer("idle", desired_replicas=0)])
    assert not ok and "ml/idle" in message  # even scaled to zero, it still names the tier
    ok, message = may_release([consumer(f"m{i:02}") for i in range(12)])
    assert not ok and message.startswith("12 ModelDeployments") and "and 2 more" in message


def test_a_large_tier_lists_a_bounded_number_of_consumers_the_limited_first() -> None:
    """Found by make bench-reconcile: listing all 1,000 consumers made a 165 KB
    status, and about 9,000 would have exceeded the API server's object limit."""
    fleet = [consumer(f"m{i:04d}", age=i, gpus_per_replica=1, desired_replicas=1)
             for i in range(1_000)]
    status = tier_status(tier(gpuBudget={"*": 990}), fleet, {}, now="2026-12-02T00:00:00Z")
    assert status.consumer_count == 1_000
    assert len(status.consumers) == MAX_LISTED_CONSUMERS
    # The last ten came too late for the budget: they are the ones a user looks for.
    late = {f"m{i:04d}" for i in range(990, 1000)}
    assert {c.name for c in status.consumers if c.limited} == late
    assert [c.name for c in status.consumers] == sorted(c.name for c in status.consumers)
    assert len(status.model_dump_json()) < 20_000
    CapacityTierStatus.model_validate(status.to_k8s())  # the CRD's maxItems holds
