"""The pure reconcile plan: what one pass applies, deletes, reports and announces."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.builders import UID, deployment, md
from tests.unit.test_properties import bodies, examples
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.capacity.ledger import Allocation
from turnpike.reconcile.plan import Observed, Plan, after_apply, needs_pods, plan
from turnpike.reconcile.validation import parse_model_deployment
from turnpike.status import Problem, parse_status

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def observe(
    body: dict[str, Any], children: list[dict[str, Any]] | None = None, **fields: Any
) -> Observed:
    return Observed(
        body,
        parse_model_deployment(body),
        parse_status(body.get("status")),
        NOW,
        children=children or [],
        **fields,
    )


def settle(child: dict[str, Any]) -> dict[str, Any]:
    """The child as the API server holds it once kube-controller-manager rolled it out."""
    live = copy.deepcopy(child)
    live["metadata"]["generation"] = 2
    if child["kind"] == "Deployment":
        n = child["spec"]["replicas"]
        live["status"] = {
            "observedGeneration": 2,
            "replicas": n,
            "updatedReplicas": n,
            "readyReplicas": n,
            "availableReplicas": n,
        }
    return live


def converged(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The live children after a first plan's applies settled."""
    return [settle(c) for c in plan(observe(body)).apply]


def test_a_first_pass_creates_every_child_with_one_event() -> None:
    result = plan(observe(md().replicas(2).build()))
    assert [c["kind"] for c in result.apply] == ["Deployment", "Service", "PodDisruptionBudget"]
    assert all(c["metadata"]["ownerReferences"][0]["uid"] == UID for c in result.apply)
    assert [e.reason for e in result.events] == ["Created"]
    assert result.delete == []
    ready = next(c for c in result.status.conditions if c.type == "Ready")
    assert ready.status == "False"  # the Deployment has not rolled out yet


def test_a_converged_object_needs_no_write() -> None:
    body = md().replicas(2).build()
    first = plan(observe(body, converged(body)))
    assert first.apply == [] and first.delete == []
    again = {**body, "status": first.status.to_k8s()}
    second = plan(observe(again, converged(body)))
    assert second.apply == [] and second.events == []
    assert second.status == first.status  # nothing to write either


def test_a_renamed_child_is_removed_only_once_its_successor_serves() -> None:
    body = md().replicas(2).build()
    old = deployment(2).named("llama-0a1b2c3d").build()  # a name an older version rendered
    during = plan(observe(body, [old]))
    assert "Deployment" in [c["kind"] for c in during.apply]
    assert during.delete == []  # the old one keeps serving while the new one starts
    rolling = [*converged(body)]
    rolling[0]["status"]["readyReplicas"] = 1
    rolling[0]["status"]["availableReplicas"] = 1
    assert plan(observe(body, [old, *rolling])).delete == []
    after = plan(observe(body, [old, *converged(body)]))
    assert [c["metadata"]["name"] for c in after.delete] == ["llama-0a1b2c3d"]
    assert "Removed" in [e.reason for e in after.events]


def test_a_child_of_another_owner_is_never_deleted() -> None:
    body = md().replicas(1).build()
    foreign = deployment(1).named("llama-old").build()
    foreign["metadata"]["ownerReferences"][0]["uid"] = "uid-someone-else"
    assert plan(observe(body, [foreign, *converged(body)])).delete == []


def test_a_known_problem_blocks_applies_and_deletes_but_reports_what_runs() -> None:
    body = md().replicas(1).build()
    old = deployment(1).named("llama-old").build()
    live = [old, *converged(body)]
    live[0]["spec"]["replicas"] = 1
    result = plan(observe(md().replicas(3).build(), live,
                          problem=Problem("SecretNotFound", "Secret s not found")))
    assert result.apply == [] and result.delete == []
    degraded = next(c for c in result.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "SecretNotFound")


def test_an_invalid_spec_only_reports() -> None:
    body = md().uri("ftp://nowhere").build()
    result = plan(observe(body))
    assert isinstance(result, Plan) and result.replicas is None and result.apply == []
    degraded = next(c for c in result.status.conditions if c.type == "Degraded")
    assert degraded.reason == "InvalidSpec"


def test_the_tier_cap_limits_the_replicas_and_the_rendered_surge() -> None:
    def allocate(desired: int) -> Allocation:
        return Allocation(2, desired > 2, "BudgetExhausted", "2 of 4 granted", "*", 2,
                          can_surge=False)

    result = plan(observe(md().replicas(4).build(), allocate=allocate, tier="pool"))
    (dep,) = [c for c in result.apply if c["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    capacity = next(c for c in result.status.conditions if c.type == "CapacityAvailable")
    assert (capacity.status, capacity.reason) == ("False", "BudgetExhausted")
    assert result.tier_changed and result.status.tier == "pool"


def test_after_apply_predicts_what_the_status_may_claim() -> None:
    desired = deployment(3).build()
    assert after_apply(desired, None)["status"] == {}
    live = deployment(2).build()
    bumped = after_apply(desired, live)
    assert bumped["metadata"]["generation"] == live["metadata"]["generation"] + 1
    assert after_apply(live, live) is live  # same spec: the generation stays


def test_pods_are_listed_only_while_replicas_are_missing() -> None:
    assert not needs_pods(None)
    assert not needs_pods(deployment(2).build())
    short = deployment(2).build()
    short["status"]["readyReplicas"] = 1
    assert needs_pods(short)


@examples(3)
@given(body=bodies(), replicas=st.integers(0, 20))
def test_any_body_plans_without_raising_and_converges_in_one_pass(
    body: dict[str, Any], replicas: int
) -> None:
    """Whatever a user stored: the plan never raises, every child it applies is owned
    by the object, and once those children are live a second pass writes nothing."""
    body = {**body, "metadata": {**body["metadata"], "namespace": "ns", "uid": UID,
                                 "generation": 1}}
    body["spec"] = {**body.get("spec", {}), "replicas": replicas} if isinstance(
        body.get("spec"), dict) else body.get("spec")
    first = plan(observe(body))
    if not isinstance(parse_model_deployment(body), ModelDeployment):
        assert first.apply == [] and first.replicas is None
        return
    for child in first.apply:
        assert child["metadata"]["ownerReferences"][0]["uid"] == UID
    live = [settle(c) for c in first.apply]
    second = plan(observe({**body, "status": first.status.to_k8s()}, live))
    assert second.apply == [] and second.delete == []
