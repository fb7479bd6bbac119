"""Status built from what other components report, whatever they report."""

from __future__ import annotations

from typing import Any

from turnpike.api.status import MAX_CONDITION_MESSAGE, Condition, ModelDeploymentStatus
from turnpike.status import Problem, next_status
from turnpike.status.conditions import model_conditions, rollout_of
from turnpike.status.modeldeployment import failed_status

NOW = "2026-12-01T12:00:00Z"


def failing_deployment(message: str) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "replicas": 1,
            "conditions": [
                {"type": "ReplicaFailure", "status": "True", "message": message},
            ],
        },
    }


def test_a_huge_message_from_the_deployment_is_truncated_not_raised() -> None:
    # Defect 9: a message over 32,768 characters made next_status raise.
    deployment = failing_deployment("x" * 40_000)
    status = next_status(
        ModelDeploymentStatus(),
        1,
        1,
        deployment,
        None,
        NOW,
        endpoint=None,
        selector=None,
        gpus_per_replica=1,
    )
    degraded = next(c for c in status.conditions if c.type == "Degraded")
    assert degraded.reason == "RolloutFailed"
    assert len(degraded.message) == MAX_CONDITION_MESSAGE
    assert degraded.message.endswith("…")


def test_a_huge_scheduler_message_is_truncated_too() -> None:
    rollout = rollout_of(failing_deployment("short"), 1)
    wanted = model_conditions(1, rollout, None, pending="y" * 50_000)
    status = next_status(
        ModelDeploymentStatus(),
        1,
        1,
        None,
        None,
        NOW,
        endpoint=None,
        selector=None,
        gpus_per_replica=1,
        conditions=wanted,
    )
    assert all(len(c.message) <= MAX_CONDITION_MESSAGE for c in status.conditions)


def test_a_failed_reconcile_keeps_what_it_did_not_observe() -> None:
    previous = ModelDeploymentStatus(
        replicas=3,
        ready_replicas=3,
        desired_replicas=3,
        conditions=[
            Condition(
                type="Ready", status="True", reason="AllReplicasReady", last_transition_time="t0"
            ),
            Condition(
                type="CapacityAvailable", status="True", reason="Granted", last_transition_time="t0"
            ),
        ],
    )
    status = failed_status(previous, 4, Problem("InternalError", "bug"), NOW)
    assert (status.replicas, status.ready_replicas, status.desired_replicas) == (3, 3, 3)
    by_type = {c.type: c for c in status.conditions}
    assert (by_type["Degraded"].status, by_type["Degraded"].reason) == ("True", "InternalError")
    assert by_type["Degraded"].observed_generation == 4
    assert by_type["CapacityAvailable"].reason == "Granted"
    assert status.observed_generation == 4


def test_a_message_that_is_not_valid_unicode_is_repaired_not_raised() -> None:
    # Found by the fuzz run: JSON can carry a lone surrogate ("\ud800").
    wanted = model_conditions(1, None, Problem("X", "bad \ud800 text"))
    status = next_status(
        ModelDeploymentStatus(),
        1,
        1,
        None,
        None,
        NOW,
        endpoint=None,
        selector=None,
        gpus_per_replica=1,
        conditions=wanted,
    )
    assert "bad ? text" in next(c for c in status.conditions if c.type == "Degraded").message
