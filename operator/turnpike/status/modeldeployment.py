"""The status a ModelDeployment should show, from what was observed (pure)."""

from __future__ import annotations

from typing import Any

from turnpike.api.status import ModelDeploymentStatus
from turnpike.status.conditions import (
    Problem,
    Wanted,
    deployment_status,
    merge_conditions,
    rollout_of,
)


def next_status(
    previous: ModelDeploymentStatus,
    generation: int,
    desired: int,
    deployment: dict[str, Any] | None,
    problem: Problem | None,
    now: str,
    *,
    endpoint: str | None,
    selector: str | None,
    gpus_per_replica: int | None,
    conditions: Wanted | None = None,
) -> ModelDeploymentStatus:
    rollout = rollout_of(deployment, desired)
    wanted = (
        conditions if conditions is not None else deployment_status(generation, rollout, problem)
    )
    merged = merge_conditions(previous.conditions, wanted, generation, now)
    replicas = rollout.replicas if rollout else 0
    return previous.model_copy(
        update={
            "observed_generation": generation,
            "conditions": merged,
            "replicas": replicas,
            "ready_replicas": rollout.ready if rollout else 0,
            "desired_replicas": desired,
            "endpoint": endpoint if endpoint is not None else previous.endpoint,
            "selector": selector if selector is not None else previous.selector,
            "gpus": replicas * gpus_per_replica if gpus_per_replica is not None else previous.gpus,
        }
    )


def parse_status(raw: dict[str, Any] | None) -> ModelDeploymentStatus:
    """The stored status, or an empty one if it is missing or was written by an older version."""
    try:
        return ModelDeploymentStatus.model_validate(raw or {})
    except ValueError:
        return ModelDeploymentStatus()


def condition(status: ModelDeploymentStatus, type_: str) -> str | None:
    for c in status.conditions:
        if c.type == type_:
            return c.status
    return None


def failed_status(
    previous: ModelDeploymentStatus, generation: int, problem: Problem, now: str
) -> ModelDeploymentStatus:
    """Status after a reconcile that could not finish: Degraded=True with ``problem``.

    Everything the failed reconcile did not observe (replica counts, the
    autoscaler's window, capacity and metrics conditions) stays as last written.
    """
    wanted = deployment_status(generation, None, problem)
    replaced = {type_ for type_, *_ in wanted}
    kept = [c for c in previous.conditions if c.type not in replaced]
    merged = merge_conditions(previous.conditions, wanted, generation, now)
    return previous.model_copy(
        update={"observed_generation": generation, "conditions": [*merged, *kept]}
    )
