"""Conditions following kstatus conventions.

Ready is the summary users wait on (`kubectl wait --for=condition=Ready`);
Progressing says a change is rolling out; Degraded says something needs a human.
Every condition carries observedGeneration so a stale status is never mistaken
for the answer to the latest spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from turnpike.api.status import (
    MAX_CONDITION_MESSAGE,
    MAX_CONDITION_REASON,
    Condition,
    ConditionStatus,
)

ELLIPSIS = "…"


@dataclass(frozen=True)
class Problem:
    """Why the operator cannot (fully) realise a spec; becomes Degraded=True."""

    reason: str
    message: str


@dataclass(frozen=True)
class Rollout:
    """What the child Deployment reports, reduced to what conditions need."""

    desired: int
    replicas: int
    updated: int
    ready: int
    available: int
    current_generation: bool
    failure: str | None


def rollout_of(deployment: dict[str, Any] | None, desired: int) -> Rollout | None:
    """The workload's progress: a Deployment's, or a LeaderWorkerSet's in groups."""
    if deployment is None:
        return None
    if deployment.get("kind") == "LeaderWorkerSet":
        return _groups_rollout(deployment, desired)
    status = deployment.get("status", {})
    failure = None
    for condition in status.get("conditions", []):
        if (
            condition.get("type") == "Progressing"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            failure = condition.get("message", "rollout exceeded its progress deadline")
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            failure = condition.get("message", "pods cannot be created")
    generation = deployment.get("metadata", {}).get("generation")
    return Rollout(
        desired=desired,
        replicas=int(status.get("replicas", 0)),
        updated=int(status.get("updatedReplicas", 0)),
        ready=int(status.get("readyReplicas", 0)),
        available=int(status.get("availableReplicas", 0)),
        current_generation=generation is not None
        and status.get("observedGeneration") == generation,
        failure=failure,
    )


def _groups_rollout(lws: dict[str, Any], desired: int) -> Rollout:
    """A LeaderWorkerSet counts groups: created (status.replicas, leaders), updated
    and ready (every pod of the group ready). It reports no observedGeneration, so
    its status is taken as current once it counts the groups its spec asks for;
    the reconcile that changes its template marks it not current itself
    (reconcile.plan.after_apply)."""
    status = lws.get("status") or {}
    spec_replicas = int((lws.get("spec") or {}).get("replicas", 0))
    replicas = int(status.get("replicas", 0))
    ready = int(status.get("readyReplicas", 0))
    return Rollout(
        desired=desired,
        replicas=replicas,
        updated=int(status.get("updatedReplicas", 0)),
        ready=ready,
        available=ready,
        current_generation=bool(status) and replicas == spec_replicas,
        failure=None,
    )


def deployment_status(
    generation: int, rollout: Rollout | None, problem: Problem | None
) -> list[tuple[str, ConditionStatus, str, str]]:
    """(type, status, reason, message) for Ready, Progressing, Degraded."""
    if problem is not None:
        ready_now = rollout is not None and _settled(rollout)
        return [
            ("Ready", "False", problem.reason, problem.message),
            ("Progressing", "False", problem.reason, "waiting for the problem to be fixed"),
            (
                "Degraded",
                "True",
                problem.reason,
                problem.message + (" (the previous revision keeps serving)" if ready_now else ""),
            ),
        ]
    if rollout is None:
        return [
            ("Ready", "False", "Creating", "creating the Deployment"),
            ("Progressing", "True", "Creating", "creating the Deployment"),
            ("Degraded", "False", "AsExpected", ""),
        ]
    if rollout.failure is not None:
        return [
            ("Ready", "False", "RolloutFailed", rollout.failure),
            ("Progressing", "False", "RolloutFailed", rollout.failure),
            ("Degraded", "True", "RolloutFailed", rollout.failure),
        ]
    counts = f"{rollout.ready}/{rollout.desired} replicas ready"
    if _settled(rollout):
        reason = "ScaledToZero" if rollout.desired == 0 else "AllReplicasReady"
        return [
            ("Ready", "True", reason, counts),
            ("Progressing", "False", reason, counts),
            ("Degraded", "False", "AsExpected", ""),
        ]
    if not rollout.current_generation:
        reason, message = "RollingOut", "the Deployment has not yet seen the latest spec"
    elif rollout.updated < rollout.desired or rollout.replicas > rollout.updated:
        reason = "RollingOut"
        message = f"{rollout.updated}/{rollout.desired} replicas updated, {counts}"
    else:
        reason, message = "WaitingForReplicas", counts
    return [
        ("Ready", "False", reason, message),
        ("Progressing", "True", reason, message),
        ("Degraded", "False", "AsExpected", ""),
    ]


def _settled(rollout: Rollout) -> bool:
    return (
        rollout.current_generation
        and rollout.updated == rollout.desired
        and rollout.replicas == rollout.desired
        and rollout.available >= rollout.desired
        and rollout.ready >= rollout.desired
    )


def truncated(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, marked with an ellipsis when cut,
    and valid Unicode (a lone surrogate, which JSON can carry, becomes "?")."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def merge_conditions(
    previous: list[Condition],
    wanted: list[tuple[str, ConditionStatus, str, str]],
    generation: int,
    now: str,
) -> list[Condition]:
    """New conditions, keeping lastTransitionTime where the status did not flip.

    Messages quote other components (the Deployment controller, the scheduler)
    whose text has no bound of ours; they are cut to what the status schema
    accepts rather than fail the whole status write.
    """
    before = {c.type: c for c in previous}
    merged = []
    for type_, status, reason, message in wanted:
        old = before.get(type_)
        since = old.last_transition_time if old is not None and old.status == status else now
        merged.append(
            Condition(
                type=type_,
                status=status,
                reason=truncated(reason, MAX_CONDITION_REASON),
                message=truncated(message, MAX_CONDITION_MESSAGE),
                observed_generation=generation,
                last_transition_time=since,
            )
        )
    return merged


def unschedulable_reason(pods: list[dict[str, Any]]) -> str | None:
    """Why pods wait, in the scheduler's words (and whether they were preempted)."""
    preempted = 0
    message = None
    for pod in pods:
        status = pod.get("status", {})
        for c in status.get("conditions", []):
            if c.get("type") == "DisruptionTarget" and c.get("reason") == "PreemptionByScheduler":
                preempted += 1
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                message = message or c.get("message")
    parts = []
    if message:
        parts.append(f"pods unschedulable: {message}")
    if preempted:
        parts.append(f"{preempted} pod(s) preempted by a higher-priority tier")
    return "; ".join(parts) or None


Wanted = list[tuple[str, ConditionStatus, str, str]]


def model_conditions(
    generation: int,
    rollout: Rollout | None,
    problem: Problem | None,
    *,
    pending: str | None = None,
    capacity: tuple[bool, str, str] | None = None,
    metrics: tuple[ConditionStatus, str, str] | None = None,
) -> Wanted:
    """Every condition of a ModelDeployment.

    pending: why pods wait (scheduler message, preemption), added to a not-ready
    Ready condition so `kubectl get md` says why a deployment is short.
    capacity: (granted in full, reason, message) from the tier, or None without tiers.
    metrics: the autoscaler's MetricsAvailable, or None without autoscaling.
    """
    wanted = deployment_status(generation, rollout, problem)
    if capacity is not None:
        full, reason, message = capacity
        wanted.append(("CapacityAvailable", "True" if full else "False", reason, message))
        if not full and rollout is not None and rollout.desired == 0 and problem is None:
            wanted = [
                ("Ready", "False", reason, message),
                ("Progressing", "True", "WaitingForCapacity", message),
                *[w for w in wanted if w[0] not in ("Ready", "Progressing")],
            ]
    if pending:
        wanted = [
            (t, s, r, f"{m}; {pending}" if t == "Ready" and s == "False" else m)
            for t, s, r, m in wanted
        ]
    if metrics is not None:
        wanted.append(("MetricsAvailable", *metrics))
    return wanted
