"""The status a CapacityTier should show (pure), and which tier a deployment uses.

Conditions follow the kstatus trio the ModelDeployment uses, plus one that is
specific to a budget:

- Ready: the accounting is current and the tier takes new deployments.
- Degraded: a human should look: pools granted beyond budget (a budget was cut
  below what runs; nothing is revoked), or several tiers claim to be the default.
- Saturated: some deployment got fewer replicas than it asked for.
- Overcommitted (dedicated and reserved tiers only): the budgets of every such
  tier exceed the GPUs the nodes have (see :mod:`turnpike.capacity.overcommit`).
  A warning beside the others: grants stay within the tier's own budget either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from turnpike.api.capacitytier import (
    MAX_LISTED_CONSUMERS,
    CapacityTier,
    CapacityTierStatus,
    TierConsumer,
)
from turnpike.api.status import ConditionStatus
from turnpike.capacity.classes import priority_class_name, priority_of
from turnpike.capacity.ledger import (
    REASON_BUDGET_EXHAUSTED,
    REASON_MIN_DOES_NOT_FIT,
    Consumer,
    allowed_replicas,
    is_terminating,
    order_key,
    usage_of,
)
from turnpike.capacity.overcommit import CONDITION as OVERCOMMITTED
from turnpike.capacity.overcommit import PROMISING, PoolCommitment, overcommit_condition
from turnpike.status.conditions import merge_conditions

Wanted = tuple[str, ConditionStatus, str, str]


def summary(per_pool: Mapping[str, int]) -> str:
    """One line for a printer column: ``*=8, NVIDIA-H100-80GB-HBM3=16``."""
    return ", ".join(f"{pool}={gpus}" for pool, gpus in sorted(per_pool.items())) or "none"


def tier_status(
    tier: CapacityTier,
    consumers: Sequence[Consumer],
    in_use_by_pool: Mapping[str, int],
    *,
    now: str,
    default_tiers: Iterable[str] = (),
    commitments: Mapping[str, PoolCommitment] | None = None,
) -> CapacityTierStatus:
    """The tier's next status.

    ``in_use_by_pool`` counts the GPUs requested by the tier's existing pods
    (Pending ones included: they hold the grant), keyed like gpuBudget, i.e. by
    the pool each consumer draws from. ``default_tiers`` names every tier whose
    spec.default is true, so a conflict can be reported on each of them.
    ``now`` is an RFC 3339 time; conditions that did not flip keep theirs.
    ``commitments`` are every dedicated and reserved tier's budgets against the
    nodes' GPUs (:func:`turnpike.capacity.overcommit.commitments`); None while the
    nodes are not known yet, which keeps the Overcommitted condition as it was.
    """
    allocations = allowed_replicas(tier, consumers)
    usage = usage_of(tier, allocations)
    generation = tier.metadata.generation or 0
    previous = tier.status or CapacityTierStatus()

    rows = []
    ordered = sorted(consumers, key=order_key)
    # Those the budget holds back first (what a platform team looks for), then the rest.
    listed = [c for c in ordered if allocations[c.key].limited]
    listed += [c for c in ordered if not allocations[c.key].limited]
    for c in sorted(listed[:MAX_LISTED_CONSUMERS], key=order_key):
        a = allocations[c.key]
        rows.append(
            TierConsumer(
                namespace=c.namespace,
                name=c.name,
                product=c.product,
                pool=a.pool,
                replicas=a.max_replicas,
                gpus=a.gpus,
                limited=a.limited,
            )
        )

    wanted = _conditions(
        tier,
        overcommitted=usage.overcommitted,
        limited=[
            f"{key}"
            for key, a in allocations.items()
            if a.reason in (REASON_BUDGET_EXHAUSTED, REASON_MIN_DOES_NOT_FIT)
        ],
        other_defaults=sorted(set(default_tiers) - {tier.name}) if tier.spec.default else [],
        consumers=len(consumers),
    )
    wanted += _overcommitted(tier, commitments, previous)
    return CapacityTierStatus(
        observed_generation=generation,
        conditions=merge_conditions(previous.conditions, wanted, generation, now),
        priority=priority_of(tier),
        priority_class_name=priority_class_name(tier.name),
        budget=dict(sorted(tier.spec.gpu_budget.items())),
        granted=dict(usage.granted),
        in_use=dict(sorted(in_use_by_pool.items())),
        free=usage.free,
        budget_summary=summary(tier.spec.gpu_budget),
        granted_summary=summary(usage.granted),
        free_summary=summary(usage.free),
        consumer_count=len(consumers),
        consumers=rows,
    )


def _conditions(
    tier: CapacityTier,
    *,
    overcommitted: Mapping[str, int],
    limited: list[str],
    other_defaults: list[str],
    consumers: int,
) -> list[Wanted]:
    problems = []
    if other_defaults:
        problems.append(
            (
                "DefaultConflict",
                f"other tiers are also the default: {', '.join(other_defaults)}; deployments "
                "without spec.tier get no new replicas until exactly one tier is the default",
            )
        )
    if overcommitted:
        over = ", ".join(f"{pool} by {gpus}" for pool, gpus in overcommitted.items())
        problems.append(
            (
                "Overcommitted",
                f"running replicas exceed the budget ({over}); nothing is revoked, new "
                "replicas wait until deployments scale down",
            )
        )

    if is_terminating(tier):
        ready: Wanted = (
            "Ready",
            "False",
            "Terminating",
            f"waiting for {_count(consumers)} to leave the tier",
        )
    elif other_defaults:
        ready = ("Ready", "False", problems[0][0], problems[0][1])
    else:
        ready = ("Ready", "True", "Accounted", f"used by {_count(consumers)}")

    degraded: Wanted = (
        ("Degraded", "True", problems[0][0], "; ".join(m for _, m in problems))
        if problems
        else ("Degraded", "False", "AsExpected", "")
    )
    saturated: Wanted = (
        (
            "Saturated",
            "True",
            "BudgetExhausted",
            f"{_count(len(limited))} got fewer replicas than asked: "
            + ", ".join(limited[:10])
            + (", …" if len(limited) > 10 else ""),
        )
        if limited
        else ("Saturated", "False", "WithinBudget", "")
    )
    return [ready, degraded, saturated]


def _overcommitted(
    tier: CapacityTier,
    commitments: Mapping[str, PoolCommitment] | None,
    previous: CapacityTierStatus,
) -> list[Wanted]:
    if commitments is not None:
        wanted = overcommit_condition(tier, commitments)
        return [wanted] if wanted is not None else []
    if tier.spec.tier_class not in PROMISING:
        return []  # on-demand and spot tiers promise nothing
    return [
        (c.type, c.status, c.reason, c.message)
        for c in previous.conditions
        if c.type == OVERCOMMITTED
    ]


def _count(n: int) -> str:
    return f"{n} ModelDeployment{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class TierResolution:
    """The tier a ModelDeployment uses, or why there is none."""

    tier: CapacityTier | None
    reason: str
    message: str


def resolve_tier(requested: str | None, tiers: Iterable[CapacityTier]) -> TierResolution:
    """spec.tier by name, else the one default tier.

    With several defaults none is chosen: quietly moving deployments to another
    class of service (and price) is worse than holding their growth until an
    administrator fixes the conflict that every default tier reports.
    """
    tiers = list(tiers)
    if requested is not None:
        for t in tiers:
            if t.name == requested:
                return TierResolution(t, "TierFound", f"CapacityTier {requested}")
        return TierResolution(None, "TierNotFound", f"CapacityTier {requested} does not exist")
    defaults = sorted((t for t in tiers if t.spec.default), key=lambda t: t.name)
    if len(defaults) == 1:
        return TierResolution(
            defaults[0], "DefaultTier", f"default CapacityTier {defaults[0].name}"
        )
    if not defaults:
        return TierResolution(
            None, "NoDefaultTier", "spec.tier is unset and no CapacityTier is the default"
        )
    names = ", ".join(t.name for t in defaults)
    return TierResolution(
        None, "DefaultConflict", f"spec.tier is unset and several tiers are the default: {names}"
    )
