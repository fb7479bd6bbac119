"""Classes of service: priorities, preemption, and the PriorityClass objects."""

from __future__ import annotations

from typing import Any

import pytest

from turnpike.api.capacitytier import MAX_USER_PRIORITY, CapacityTier, TierClass
from turnpike.capacity.classes import (
    CLASS_ORDER,
    CLASS_PRIORITY,
    LABEL_CAPACITY_TIER,
    class_priority,
    preemption_policy,
    priority_class_name,
    priority_class_needs_replacement,
    priority_of,
    render_priority_class,
)


def tier(name: str, tier_class: str, **spec: Any) -> CapacityTier:
    if tier_class == "dedicated":
        spec.setdefault("nodeSelector", {"turnpike.dev/pool": name})
    return CapacityTier.from_k8s(
        {"metadata": {"name": name}, "spec": {"class": tier_class, "gpuBudget": {"*": 8}, **spec}}
    )


def test_classes_are_ordered_dedicated_reserved_on_demand_spot() -> None:
    assert CLASS_ORDER == (
        TierClass.DEDICATED,
        TierClass.RESERVED,
        TierClass.ON_DEMAND,
        TierClass.SPOT,
    )
    values = [class_priority(c) for c in CLASS_ORDER]
    assert values == [1_000_000, 900_000, 500_000, 100_000]
    assert values == sorted(values, reverse=True)
    assert set(CLASS_PRIORITY) == set(TierClass)


def test_priorities_stay_in_the_user_range_above_unclassed_pods() -> None:
    for value in CLASS_PRIORITY.values():
        assert 0 < value < MAX_USER_PRIORITY


@pytest.mark.parametrize(
    ("tier_class", "policy"),
    [
        ("dedicated", "PreemptLowerPriority"),
        ("reserved", "PreemptLowerPriority"),
        ("on-demand", "PreemptLowerPriority"),
        ("spot", "Never"),
    ],
)
def test_only_spot_never_preempts(tier_class: str, policy: str) -> None:
    assert preemption_policy(TierClass(tier_class)) == policy
    assert render_priority_class(tier("t", tier_class))["preemptionPolicy"] == policy


def test_who_may_preempt_whom() -> None:
    # The scheduler preempts only strictly lower priorities, and only for pods
    # whose policy allows it: spot yields to everyone and evicts no one.
    tiers = {c: tier(c.value, c.value) for c in TierClass}

    def may_preempt(a: TierClass, b: TierClass) -> bool:
        pa, pb = render_priority_class(tiers[a]), render_priority_class(tiers[b])
        return bool(pa["preemptionPolicy"] != "Never" and pa["value"] > pb["value"])

    assert may_preempt(TierClass.RESERVED, TierClass.ON_DEMAND)
    assert may_preempt(TierClass.RESERVED, TierClass.SPOT)
    assert may_preempt(TierClass.ON_DEMAND, TierClass.SPOT)
    assert not may_preempt(TierClass.ON_DEMAND, TierClass.RESERVED)
    assert not any(may_preempt(TierClass.SPOT, other) for other in TierClass)
    assert not any(may_preempt(c, c) for c in TierClass)


def test_priority_override() -> None:
    assert priority_of(tier("r", "reserved")) == 900_000
    assert priority_of(tier("r2", "reserved", priority=950_000)) == 950_000
    # The override changes the value, never the preemption policy of the class.
    spot = render_priority_class(tier("s", "spot", priority=600_000))
    assert (spot["value"], spot["preemptionPolicy"]) == (600_000, "Never")


def test_render_priority_class() -> None:
    pc = render_priority_class(tier("a100-spot", "spot"))
    assert pc == {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {
            "name": "turnpike-a100-spot",
            "labels": {
                "app.kubernetes.io/managed-by": "turnpike",
                "app.kubernetes.io/part-of": "turnpike",
                LABEL_CAPACITY_TIER: "a100-spot",
            },
        },
        "value": 100_000,
        "preemptionPolicy": "Never",
        "globalDefault": False,
        "description": "Pods of Turnpike CapacityTier a100-spot (class spot, priority 100000, "
        "never preempts).",
    }
    assert priority_class_name("x") == "turnpike-x"
    longest = priority_class_name("a" * 63)
    assert len(longest) <= 253  # a PriorityClass name is a DNS subdomain


def test_immutable_fields_force_replacement() -> None:
    wanted = render_priority_class(tier("r", "reserved"))
    assert not priority_class_needs_replacement(wanted, wanted)
    assert not priority_class_needs_replacement({**wanted, "description": "old"}, wanted)
    assert priority_class_needs_replacement({**wanted, "value": 1}, wanted)
    assert priority_class_needs_replacement({**wanted, "preemptionPolicy": "Never"}, wanted)
    defaulted = {k: v for k, v in wanted.items() if k != "preemptionPolicy"}
    assert not priority_class_needs_replacement(defaulted, wanted)
