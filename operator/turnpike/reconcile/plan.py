"""One reconcile of a ModelDeployment, decided in one pure function.

The controller gathers what it observed (the stored object, the live children,
the tier's verdict, the autoscaler's decision, pods where needed) into
:class:`Observed`; :func:`plan` returns every write the reconcile should make
(children to apply, children to delete, the status, the Events). Nothing here
does I/O or reads a clock, so every branch a user could hit is a unit test, and
a bug here becomes a Degraded condition in the shell instead of a stuck key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from turnpike.api.modeldeployment import ModelDeployment
from turnpike.api.status import (
    AutoscalerHistory,
    ColdStart,
    ConditionStatus,
    ModelDeploymentStatus,
    ModelDeploymentUsage,
)
from turnpike.autoscale.policy import Decision
from turnpike.capacity import Allocation
from turnpike.capacity.meter import USAGE_FLUSH_MS, with_usage
from turnpike.reconcile.children import (
    desired_children,
    desired_replicas,
    is_workload,
    too_large,
)
from turnpike.reconcile.diff import contains, needs_apply
from turnpike.render import endpoint, selector
from turnpike.render.mpikeys import MpiKeys
from turnpike.slo import CONDITION as SLO_CONDITION
from turnpike.slo import Report, slo_condition, slo_status
from turnpike.status.conditions import (
    Problem,
    model_conditions,
    rollout_of,
    unschedulable_reason,
)
from turnpike.status.groups import group_holdup, group_statuses
from turnpike.status.modeldeployment import condition, next_status


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Scaling:
    """The autoscaler's decision for this reconcile (made with the tier's cap)."""

    decision: Decision
    # Whether the autoscaler's window is due to be written to status now.
    flush: bool


@dataclass(frozen=True)
class Placement:
    """What the tier adds to the pods: priority and, for dedicated pools, where."""

    tier: str
    priority_class: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]


@dataclass(frozen=True)
class Observed:
    """Everything one reconcile of a ModelDeployment depends on."""

    body: dict[str, Any]  # the ModelDeployment as stored
    spec: ModelDeployment | Problem  # its parsed spec, or why it cannot be used
    previous: ModelDeploymentStatus
    now: datetime
    # A problem the shell found (a missing Secret, an unusable tier).
    problem: Problem | None = None
    scaling: Scaling | None = None
    tier: str | None = None
    # The tier's answer for any replica count; None when accounting is off.
    allocate: Callable[[int], Allocation] | None = None
    placement: Placement | None = None
    # Every live child this ModelDeployment controls, whatever its name.
    children: Sequence[dict[str, Any]] = ()
    # Its pods, when the shell listed them (see needs_pods).
    pods: list[dict[str, Any]] | None = None
    # The SLO's window after this reconcile's sampling round (spec.slo only).
    slo: Report | None = None
    # The GPU meter's totals up to now (None: not metered; status keeps what it has).
    usage: ModelDeploymentUsage | None = None
    # How long usage waits between writes of its own (see capacity.meter).
    usage_flush_ms: int = USAGE_FLUSH_MS
    # The ssh keys of a multi-node workload: the live Secret's, or a fresh set
    # when it is missing (the shell generates them; plan only renders them).
    mpi_keys: MpiKeys | None = None


@dataclass(frozen=True)
class Plan:
    replicas: int | None
    apply: list[dict[str, Any]] = field(default_factory=list)
    # Live children no longer wanted (a name or kind this version does not render).
    delete: list[dict[str, Any]] = field(default_factory=list)
    status: ModelDeploymentStatus = field(default_factory=ModelDeploymentStatus)
    events: list[Event] = field(default_factory=list)
    # Whether the tier's status should be recomputed (grants or membership moved).
    tier_changed: bool = False


def rfc3339(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def needs_pods(observed_deployment: dict[str, Any] | None) -> bool:
    """Whether a reconcile should list pods to explain why replicas are missing:
    the Deployment has fewer ready replicas than it wants (or does not exist)."""
    if observed_deployment is None:
        return False  # nothing runs yet: no pod can be pending
    spec = int(observed_deployment.get("spec", {}).get("replicas", 0))
    ready = int(observed_deployment.get("status", {}).get("readyReplicas", 0))
    return ready < spec


def after_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    """The workload as the API server will hold it right after the apply: the new
    spec, and a generation that moved with it, so its status is not yet current.
    (A LeaderWorkerSet reports no observedGeneration: its status is dropped.)"""
    if live is None:
        return {**desired, "metadata": {**desired["metadata"], "generation": 1}, "status": {}}
    if contains(live.get("spec", {}), desired.get("spec", {})):
        return live
    generation = int(live.get("metadata", {}).get("generation", 0)) + 1
    moved = {
        **live,
        "spec": desired["spec"],
        "metadata": {**live["metadata"], "generation": generation},
    }
    if live.get("kind") == "LeaderWorkerSet":
        moved["status"] = {}
    return moved


def settled(deployment: dict[str, Any] | None, replicas: int) -> bool:
    """The Deployment runs its current template at full strength (or wants none)."""
    rollout = rollout_of(deployment, replicas)
    if rollout is None:
        return False
    return rollout.current_generation and (
        replicas == 0 or (rollout.updated >= replicas and rollout.available >= replicas)
    )


def metrics_condition(decision: Decision) -> tuple[ConditionStatus, str, str]:
    """MetricsAvailable: missing or stale metrics hold the count and say so."""
    if decision.metrics_stale:
        return ("False", "MetricsUnavailable", decision.reason)
    if decision.metrics_partial:
        return ("True", "PartialMetrics", decision.reason)
    return ("True", "MetricsRead", "")


def capacity_condition(allocation: Allocation) -> tuple[bool, str, str]:
    """CapacityAvailable: what the tier granted, and how rollouts proceed within it."""
    message = allocation.message
    if not allocation.can_surge:
        message += (
            "; no GPUs left in the tier for a rollout's extra replica, so rollouts replace "
            "one replica at a time (maxSurge 0, maxUnavailable 1)"
        )
    return (not allocation.limited, allocation.reason, message)


def transition_events(
    previous: ModelDeploymentStatus, status: ModelDeploymentStatus
) -> list[Event]:
    """An Event when Ready or Degraded becomes True, and when SLOMet turns False
    (or its reason changes) or back to True, never on every pass."""
    events = []
    for type_, event_type in (("Ready", "Normal"), ("Degraded", "Warning")):
        if condition(status, type_) == "True" and condition(previous, type_) != "True":
            c = next(c for c in status.conditions if c.type == type_)
            events.append(Event(event_type, c.reason, c.message or type_))
    now = next((c for c in status.conditions if c.type == SLO_CONDITION), None)
    before = next((c for c in previous.conditions if c.type == SLO_CONDITION), None)
    if now is not None and now.status != "Unknown":
        moved = before is None or (before.status, before.reason) != (now.status, now.reason)
        if moved and (now.status == "False" or (before is not None and before.status == "False")):
            kind = "Normal" if now.status == "True" else "Warning"
            events.append(Event(kind, f"SLO{now.reason}", now.message))
    return events


def invalid_plan(observed: Observed, problem: Problem) -> Plan:
    """A spec the operator cannot use: say why; leave what runs as it is."""
    previous = observed.previous
    generation = int(observed.body["metadata"].get("generation", 0))
    status = next_status(
        previous,
        generation,
        previous.desired_replicas or 0,
        None,
        problem,
        rfc3339(observed.now),
        endpoint=None,
        selector=None,
        gpus_per_replica=None,
    )
    return Plan(None, status=status, events=transition_events(previous, status))


def unwanted(
    children: Sequence[dict[str, Any]], desired: Sequence[dict[str, Any]], uid: str
) -> list[dict[str, Any]]:
    """Live children of this ModelDeployment (same uid) that no longer match any
    rendered one by kind and name: left behind by a rename of the children."""
    wanted = {(c["kind"], c["metadata"]["name"]) for c in desired}
    out = []
    for child in children:
        if (child["kind"], child["metadata"]["name"]) in wanted:
            continue
        refs = child["metadata"].get("ownerReferences") or []
        if any(r.get("controller") and r.get("uid") == uid for r in refs):
            out.append(child)
    return out


def plan(observed: Observed) -> Plan:
    if isinstance(observed.spec, Problem):
        return invalid_plan(observed, observed.spec)
    md = observed.spec
    body, previous, now = observed.body, observed.previous, observed.now
    metadata = body["metadata"]
    generation = int(metadata.get("generation", 0))
    uid = str(metadata.get("uid", ""))
    problem = observed.problem
    decision = observed.scaling.decision if observed.scaling is not None else None

    wanted_replicas = desired_replicas(md, previous.desired_replicas)
    if decision is not None:
        wanted_replicas = decision.replicas
    # The condition reports what was asked for: a wish the budget capped is
    # BudgetExhausted, though the decision already holds at what fits.
    asked = wanted_replicas
    if decision is not None and decision.wanted is not None:
        asked = max(asked, decision.wanted)
    allocation = observed.allocate(asked) if observed.allocate is not None else None
    replicas = (
        min(allocation.max_replicas, wanted_replicas) if allocation is not None else wanted_replicas
    )
    placement = observed.placement
    desired = desired_children(
        md,
        replicas,
        uid,
        priority_class=placement.priority_class if placement else None,
        node_selector=placement.node_selector if placement else None,
        tolerations=placement.tolerations if placement else None,
        surge=allocation.can_surge if allocation is not None else True,
        mpi_keys=observed.mpi_keys,
    )
    problem = problem or too_large(desired)

    live = {(c["kind"], c["metadata"]["name"]): c for c in observed.children}
    apply: list[dict[str, Any]] = []
    deployment: dict[str, Any] | None = None
    events: list[Event] = []
    created: list[str] = []
    updated: list[str] = []
    for child in desired:
        before = live.get((child["kind"], child["metadata"]["name"]))
        stale = problem is None and needs_apply(child, before)
        if stale:
            apply.append(child)
            (created if before is None else updated).append(child["kind"])
        if is_workload(child):
            deployment = after_apply(child, before) if stale else before
    if apply:
        # One Event per reconcile, not one per child: a first reconcile of a
        # thousand objects should not post three thousand Events.
        parts = ([f"created {', '.join(created)}"] if created else []) + (
            [f"updated {', '.join(updated)}"] if updated else []
        )
        reason = "Created" if created and not updated else "Updated"
        events.append(Event("Normal", reason, "; ".join(parts).capitalize()))

    # Children this version no longer renders go once the wanted Deployment serves
    # in full, so a rename never takes the model offline.
    delete: list[dict[str, Any]] = []
    if problem is None and not apply and settled(deployment, replicas):
        delete = unwanted(observed.children, desired, uid)
        if delete:
            names = ", ".join(f"{c['kind']} {c['metadata']['name']}" for c in delete)
            events.append(Event("Normal", "Removed", f"Removed {names}, no longer rendered"))

    groups = previous.groups
    if md.spec.gpu.multi_node and observed.pods is not None:
        groups, restarted = group_statuses(previous.groups, observed.pods, rfc3339(now), replicas)
        events += [Event("Warning", "GroupRestarted", message) for message in restarted]
    elif not md.spec.gpu.multi_node:
        groups = None
    rollout = rollout_of(deployment, replicas)
    pending = None
    if rollout is not None and rollout.ready < rollout.desired and observed.pods is not None:
        pending = unschedulable_reason(observed.pods)
        if md.spec.gpu.multi_node:
            holdup = group_holdup(groups or [])
            pending = "; ".join(p for p in (holdup, pending) if p) or None
    conditions = model_conditions(
        generation,
        rollout,
        problem,
        pending=pending,
        capacity=capacity_condition(allocation) if allocation is not None else None,
        metrics=metrics_condition(decision) if decision is not None else None,
    )
    slo_update, slo_wanted = slo_fields(
        md,
        previous,
        observed.slo,
        budget_limited=(decision is not None and decision.limited_by_budget)
        or (allocation is not None and allocation.limited),
    )
    if slo_wanted is not None:
        conditions.append(slo_wanted)
    status = next_status(
        previous,
        generation,
        replicas,
        deployment,
        problem,
        rfc3339(now),
        endpoint=endpoint(md),
        selector=selector(md),
        gpus_per_replica=md.spec.gpu.per_replica,
        conditions=conditions,
    )
    update: dict[str, Any] = {"tier": observed.tier, "slo": slo_update, "groups": groups}
    update.update(autoscaling_fields(previous, observed.scaling, now))
    status = status.model_copy(update=update)
    status = with_usage(previous, status, observed.usage, observed.usage_flush_ms)
    woke = cold_start(previous, replicas, status.ready_replicas, now)
    status = status.model_copy(update={"cold_start": woke})
    if woke is not None and woke.seconds is not None and previous.cold_start != woke:
        events.append(
            Event("Normal", "ColdStart", f"First replica ready {woke.seconds:g} s after waking")
        )
    events += transition_events(previous, status)
    if decision is not None and decision.changed and replicas != previous.desired_replicas:
        reason = "ScaledUp" if replicas > (previous.desired_replicas or 0) else "ScaledDown"
        message = decision.reason
        if allocation is not None and allocation.limited:
            message += f"; capped by CapacityTier {observed.tier or ''}: {allocation.message}"
        events.append(Event("Normal", reason, message))
    tier_changed = observed.tier is not None and (
        replicas != previous.desired_replicas or previous.tier != observed.tier
    )
    return Plan(replicas, apply, delete, status, events, tier_changed)


def cold_start(
    previous: ModelDeploymentStatus, replicas: int, ready: int, now: datetime
) -> ColdStart | None:
    """status.coldStart: stamped when replicas leave zero, completed at the first ready.

    Measured from the operator's decision to the ready replica as the operator
    sees it, so it is what a request held at the gateway waits, give or take a
    reconcile and a readiness probe period.
    """
    last = previous.cold_start
    if previous.desired_replicas == 0 and replicas > 0:
        return ColdStart(woken=rfc3339(now))
    if last is not None and last.ready is None and ready > 0:
        try:
            woken = datetime.fromisoformat(last.woken.replace("Z", "+00:00"))
        except ValueError:
            return None  # not ours to repair: the next wake writes a fresh one
        seconds = max(0.0, (now - woken).total_seconds())
        return ColdStart(woken=last.woken, ready=rfc3339(now), seconds=round(seconds, 1))
    return last


def autoscaling_fields(
    previous: ModelDeploymentStatus, scaling: Scaling | None, now: datetime
) -> dict[str, Any]:
    if scaling is None:
        return {"queue_depth": None, "autoscaler": None}
    decision = scaling.decision
    update: dict[str, Any] = {}
    if scaling.flush:
        per_replica = decision.per_replica
        update["queue_depth"] = round(per_replica, 2) if per_replica is not None else None
        update["autoscaler"] = AutoscalerHistory.model_validate(decision.history.to_dict())
    else:
        update["queue_depth"] = previous.queue_depth
        update["autoscaler"] = previous.autoscaler
    if decision.changed:
        update["last_scale"] = decision.as_status(rfc3339(now))
    return update


# SLOMet reasons that mean "burning now" (BudgetLimited may also be a spent budget;
# either way the exit threshold of the burn rate applies).
BURNING = ("Burning", "BudgetLimited")


def slo_fields(
    md: ModelDeployment,
    previous: ModelDeploymentStatus,
    report: Report | None,
    *,
    budget_limited: bool,
) -> tuple[Any, tuple[str, ConditionStatus, str, str] | None]:
    """status.slo and the SLOMet condition. The counts are written when the
    autoscaler's spacing says so or the condition changes; between, status keeps
    the last written numbers (a status write per scrape would load the API server)."""
    slo = md.spec.slo
    if slo is None:
        return None, None
    if report is None:
        # No round this reconcile (no autoscaler): keep what was written.
        kept = next((c for c in previous.conditions if c.type == SLO_CONDITION), None)
        if kept is None:
            return previous.slo, None
        return previous.slo, (SLO_CONDITION, kept.status, kept.reason, kept.message)
    fresh = slo_status(slo, report)
    kept = next((c for c in previous.conditions if c.type == SLO_CONDITION), None)
    was_burning = kept is not None and kept.status == "False" and kept.reason in BURNING
    wanted = slo_condition(
        slo,
        fresh,
        report.unavailable,
        budget_limited or report.capped_recently,
        was_burning=was_burning,
    )
    same = kept is not None and (kept.status, kept.reason) == wanted[:2]
    if report.flush or not same or previous.slo is None:
        return fresh, (SLO_CONDITION, *wanted)
    assert kept is not None
    return previous.slo, (SLO_CONDITION, kept.status, kept.reason, kept.message)
