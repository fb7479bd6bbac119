"""The gateway's routing table from ModelDeployments and pods as the API server shows them."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from turnpike.gateway.discovery import Discovery, endpoint_from, served_from
from turnpike.render.labels import LABEL_MODEL_DEPLOYMENT
from turnpike.render.names import label_value


def md(
    name: str,
    namespace: str = "ml",
    *,
    model: str | None = None,
    created: str = "2026-12-01T00:00:00Z",
    autoscaling: bool = False,
    replicas: int = 1,
    max_replicas: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": "s3://b/m"}, "replicas": replicas}
    if model is not None:
        spec["model"]["name"] = model
    if autoscaling:
        spec["autoscaling"] = {"enabled": True}
        spec["maxReplicas"] = max_replicas
    return {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": spec,
    }


def pod(
    name: str,
    deployment: str,
    namespace: str = "ml",
    *,
    ip: str = "10.0.0.1",
    ready: bool = True,
    terminating: bool = False,
    phase: str = "Running",
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {LABEL_MODEL_DEPLOYMENT: label_value(deployment)},
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-12-01T00:00:05Z"
    return {
        "metadata": meta,
        "spec": {
            "containers": [
                {
                    "name": "triton",
                    "ports": [
                        {"name": "http", "containerPort": 8000},
                        {"name": "metrics", "containerPort": 8002},
                    ],
                }
            ]
        },
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_a_ready_pod_is_routed_to_under_the_model_and_its_qualified_name() -> None:
    found = Discovery()
    found.replace_deployments([md("llama", model="llama-3")])
    found.replace_pods([pod("llama-a", "llama", ip="10.0.0.7")])
    fleet = found.fleet("llama-3")
    assert fleet is not None and fleet == found.fleet("ml/llama")
    assert fleet.deployment == "ml/llama"
    assert fleet.upstream == "llama-3"
    assert [(e.host, e.port, e.metrics_port, e.name) for e in fleet.ready] == [
        ("10.0.0.7", 8000, 8002, "llama-a")
    ]
    assert found.fleet("llama") is None  # plain names are models, not objects
    assert found.fleet("ml/llama-3") is None


def test_without_a_model_name_the_object_name_is_the_model() -> None:
    found = Discovery()
    found.replace_deployments([md("sleepy")])
    fleet = found.fleet("sleepy")
    assert fleet is not None and fleet.upstream == "sleepy" and fleet.ready == ()


def test_unready_terminating_and_pending_pods_get_no_requests() -> None:
    found = Discovery()
    found.replace_deployments([md("m")])
    found.replace_pods(
        [
            pod("a", "m", ready=False),
            pod("b", "m", terminating=True),
            pod("c", "m", phase="Pending"),
            pod("d", "m", ip="10.0.0.4"),
        ]
    )
    fleet = found.fleet("m")
    assert fleet is not None and [e.name for e in fleet.ready] == ["d"]


def test_the_oldest_deployment_keeps_the_plain_name_and_each_keeps_its_qualified_one() -> None:
    found = Discovery()
    older = md("a", "team-a", model="llama", created="2026-01-01T00:00:00Z")
    newer = md("b", "team-a", model="llama", created="2026-02-01T00:00:00Z")
    changed = found.replace_deployments([newer, older])
    assert {"llama", "team-a/a", "team-a/b"} <= changed
    assert (f := found.fleet("llama")) is not None and f.deployment == "team-a/a"
    assert (f := found.fleet("team-a/b")) is not None and f.deployment == "team-a/b"
    # When the older one goes, the plain name moves, and that is reported.
    assert "llama" in found.deployment_seen("DELETED", older)
    assert (f := found.fleet("llama")) is not None and f.deployment == "team-a/b"
    assert found.fleet("team-a/a") is None


def test_pods_of_another_namespace_or_deployment_are_not_mixed_in() -> None:
    found = Discovery()
    found.replace_deployments([md("m", "a"), md("m", "b")])
    found.replace_pods([pod("p1", "m", "a", ip="10.0.0.1"), pod("p2", "m", "b", ip="10.0.0.2")])
    assert (f := found.fleet("a/m")) is not None and [e.host for e in f.ready] == ["10.0.0.1"]
    assert (f := found.fleet("b/m")) is not None and [e.host for e in f.ready] == ["10.0.0.2"]


def test_max_replicas_is_the_autoscalers_ceiling_or_the_fixed_count() -> None:
    scaled = served_from(md("x", autoscaling=True, max_replicas=6))
    fixed = served_from(md("y", replicas=3))
    assert scaled is not None and scaled.max_replicas == 6
    assert fixed is not None and fixed.max_replicas == 3


def test_bodies_the_gateway_cannot_read_are_skipped_not_fatal() -> None:
    found = Discovery()
    garbage: list[Any] = [
        {},
        {"metadata": {"name": 5, "namespace": "ml"}},
        {"metadata": {"name": "x", "namespace": "ml"}, "spec": "nonsense"},
        {"metadata": {"name": "y", "namespace": "ml"}, "spec": {"model": 7, "autoscaling": []}},
    ]
    found.replace_deployments(garbage)
    assert found.models() == ("ml/y", "y")
    assert endpoint_from({"metadata": {"name": "p"}}) is None
    assert found.pod_seen("ADDED", {}) == set()


def test_a_relist_of_one_namespace_leaves_the_others_alone() -> None:
    found = Discovery()
    found.replace_deployments([md("m", "a")], "a")
    found.replace_deployments([md("n", "b")], "b")
    found.replace_pods([pod("p", "m", "a")], "a")
    found.replace_pods([], "b")
    found.replace_deployments([md("m", "a")], "a")
    assert found.models() == ("a/m", "b/n", "m", "n")
    assert (f := found.fleet("m")) is not None and len(f.ready) == 1


POD_NAMES = st.sampled_from(["p0", "p1", "p2", "p3"])
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["ADDED", "MODIFIED", "DELETED"]),
        POD_NAMES,
        st.sampled_from(["m", "n"]),
        st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_any_event_order_reports_every_name_whose_fleet_changed(
    events: list[tuple[str, str, str, bool]],
) -> None:
    found = Discovery()
    found.replace_deployments([md("m", model="shared"), md("n")])
    truth: dict[str, dict[str, Any]] = {}
    names = ("shared", "ml/m", "n", "ml/n")
    for event, name, owner, ready in events:
        body = pod(name, owner, ip=f"10.0.0.{int(name[1:]) + 1}", ready=ready)
        before = {n: found.fleet(n) for n in names}
        changed = found.pod_seen(event, body)
        if event == "DELETED":
            truth.pop(name, None)
        else:
            truth[name] = body
        after = {n: found.fleet(n) for n in names}
        assert {n for n in names if before[n] != after[n]} <= changed
    expected = sorted(
        n
        for n, b in truth.items()
        if b["status"]["conditions"][0]["status"] == "True"
        and b["metadata"]["labels"][LABEL_MODEL_DEPLOYMENT] == "m"
    )
    shared = found.fleet("shared")
    assert shared is not None and [e.name for e in shared.ready] == expected


def test_the_slo_threshold_travels_only_for_request_latency() -> None:
    on_requests = md("a")
    on_requests["spec"]["slo"] = {"thresholdMilliseconds": 250}
    on_queue = md("b")
    on_queue["spec"]["slo"] = {"latency": "queueWait", "thresholdMilliseconds": 50}
    nonsense = md("c")
    nonsense["spec"]["slo"] = {"thresholdMilliseconds": "fast"}
    found = [served_from(x) for x in (on_requests, on_queue, nonsense, md("d"))]
    assert [s.slo_threshold_ms if s else "-" for s in found] == [250.0, None, None, None]
