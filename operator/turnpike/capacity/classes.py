"""Classes of service and the PriorityClass each tier's pods run under.

The kube-scheduler, not the operator, enforces who yields to whom: a pod that
does not fit may preempt pods of a lower priority. Each class therefore maps to
a priority, spaced widely so a tier's ``priority`` override can slot between
two classes without renumbering the rest:

    dedicated   1 000 000   its own (tainted) node pool; the top value only matters
                            if its nodes are ever shared
    reserved      900 000   guaranteed share of the shared pool; preempts on-demand and spot
    on-demand     500 000   free shared GPUs; preempts spot
    spot          100 000   preemptionPolicy Never: it waits for idle GPUs instead
                            of evicting anyone, and is the first to be evicted

All are far below 1 000 000 000, the ceiling for user PriorityClasses (the
system-* classes sit above it), and above 0, the priority of pods without a
class, so GPU servers outrank stray batch pods that name no PriorityClass.
"""

from __future__ import annotations

from typing import Any, Literal

from turnpike.api.capacitytier import CapacityTier, TierClass
from turnpike.api.constants import GROUP
from turnpike.render.labels import LABEL_MANAGED_BY, LABEL_PART_OF, MANAGER

PreemptionPolicy = Literal["Never", "PreemptLowerPriority"]

CLASS_PRIORITY: dict[TierClass, int] = {
    TierClass.DEDICATED: 1_000_000,
    TierClass.RESERVED: 900_000,
    TierClass.ON_DEMAND: 500_000,
    TierClass.SPOT: 100_000,
}
# Most protected first: the order in which classes keep their GPUs under pressure.
CLASS_ORDER: tuple[TierClass, ...] = tuple(
    sorted(CLASS_PRIORITY, key=lambda c: CLASS_PRIORITY[c], reverse=True)
)
PRIORITY_CLASS_PREFIX = "turnpike-"
LABEL_CAPACITY_TIER = f"{GROUP}/capacity-tier"


def class_priority(tier_class: TierClass) -> int:
    return CLASS_PRIORITY[tier_class]


def priority_of(tier: CapacityTier) -> int:
    """The tier's override wins: an operator may want two reserved tiers ranked."""
    if tier.spec.priority is not None:
        return tier.spec.priority
    return class_priority(tier.spec.tier_class)


def preemption_policy(tier_class: TierClass) -> PreemptionPolicy:
    """Spot work is opportunistic: letting it evict anything would make spot a way
    to jump the queue. Everything else may preempt what ranks below it."""
    return "Never" if tier_class is TierClass.SPOT else "PreemptLowerPriority"


def priority_class_name(tier_name: str) -> str:
    # Tier names are DNS labels (the CRD enforces it), so the result is a valid
    # PriorityClass name (DNS subdomain) without hashing.
    return f"{PRIORITY_CLASS_PREFIX}{tier_name}"


def render_priority_class(tier: CapacityTier) -> dict[str, Any]:
    """The scheduling.k8s.io/v1 PriorityClass the tier's pods name.

    ``value`` and ``preemptionPolicy`` are immutable on the API server: when
    :func:`priority_class_needs_replacement` says so, delete and recreate it.
    Running pods keep the value resolved when they were admitted.
    """
    tier_class = tier.spec.tier_class
    priority = priority_of(tier)
    policy = preemption_policy(tier_class)
    preempts = "never preempts" if policy == "Never" else "preempts lower priorities"
    return {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {
            "name": priority_class_name(tier.name),
            "labels": {
                LABEL_MANAGED_BY: MANAGER,
                LABEL_PART_OF: MANAGER,
                LABEL_CAPACITY_TIER: tier.name,
            },
        },
        "value": priority,
        "preemptionPolicy": policy,
        "globalDefault": False,
        "description": (
            f"Pods of Turnpike CapacityTier {tier.name} (class {tier_class.value}, "
            f"priority {priority}, {preempts})."
        ),
    }


def priority_class_needs_replacement(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """True when an update would be refused because an immutable field differs.

    The API server defaults an absent preemptionPolicy to PreemptLowerPriority.
    """
    value_changed: bool = existing.get("value") != wanted["value"]
    policy = existing.get("preemptionPolicy", "PreemptLowerPriority")
    policy_changed: bool = policy != wanted["preemptionPolicy"]
    return value_changed or policy_changed
