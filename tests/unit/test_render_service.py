"""The Service, the PodDisruptionBudget, the endpoint URL and the metadata helpers."""

from __future__ import annotations

from typing import Any

import pytest

from turnpike.api import ModelDeployment
from turnpike.api.constants import API_VERSION
from turnpike.render import (
    LABEL_MODEL_DEPLOYMENT,
    endpoint,
    owner_reference,
    render_deployment,
    render_pdb,
    render_service,
)


def make_md(name: str = "llama", namespace: str = "ml") -> ModelDeployment:
    return ModelDeployment.from_k8s(
        {
            "metadata": {"name": name, "namespace": namespace, "uid": "u-1"},
            "spec": {"model": {"uri": "s3://b/m"}},
        }
    )


def all_objects(md: ModelDeployment) -> list[dict[str, Any]]:
    return [render_deployment(md, replicas=2), render_service(md), render_pdb(md, replicas=2)]


def test_service_exposes_http_grpc_and_metrics_by_name() -> None:
    svc = render_service(make_md())
    assert svc["apiVersion"] == "v1"
    assert svc["kind"] == "Service"
    assert svc["spec"]["type"] == "ClusterIP"
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {"http": (8000, "http"), "grpc": (8001, "grpc"), "metrics": (8002, "metrics")}


def test_service_target_ports_exist_on_the_pods() -> None:
    md = make_md()
    container = render_deployment(md, replicas=1)["spec"]["template"]["spec"]["containers"][0]
    pod_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in render_service(md)["spec"]["ports"]:
        assert pod_ports[port["targetPort"]] == port["port"]


def test_service_and_pdb_select_exactly_the_deployments_pods() -> None:
    md = make_md()
    deployment = render_deployment(md, replicas=1)
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert render_service(md)["spec"]["selector"] == selector
    assert render_pdb(md, replicas=1)["spec"]["selector"] == {"matchLabels": selector}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()


def test_endpoint_is_the_services_cluster_dns_name() -> None:
    assert endpoint(make_md("llama", "team-a")) == "http://llama.team-a.svc:8000"


def test_endpoint_follows_the_derived_service_name() -> None:
    md = make_md("3.1-instruct")
    assert endpoint(md) == f"http://{render_service(md)['metadata']['name']}.ml.svc:8000"


def test_long_names_give_valid_service_names() -> None:
    md = make_md("x" * 200)
    name = render_service(md)["metadata"]["name"]
    assert len(name) <= 63
    assert name[0].isalpha()


def test_pdb_lets_drains_take_one_replica_at_a_time() -> None:
    pdb = render_pdb(make_md(), replicas=4)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["kind"] == "PodDisruptionBudget"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]


@pytest.mark.parametrize("replicas", [0, 1, 2, 50])
def test_pdb_does_not_change_with_scale(replicas: int) -> None:
    # Rewriting the budget on every autoscaling step would be churn for nothing.
    assert render_pdb(make_md(), replicas=replicas) == render_pdb(make_md(), replicas=1)


def test_pdb_lets_drains_evict_pods_that_are_not_serving() -> None:
    assert render_pdb(make_md(), replicas=1)["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_every_object_is_named_labelled_and_namespaced_alike() -> None:
    md = make_md("llama", "team-a")
    for obj in all_objects(md):
        meta = obj["metadata"]
        assert meta["name"] == "llama"
        assert meta["namespace"] == "team-a"
        assert meta["labels"]["app.kubernetes.io/name"] == "llama"
        assert meta["labels"]["app.kubernetes.io/instance"] == "llama"
        assert meta["labels"]["app.kubernetes.io/component"] == "inference-server"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "turnpike"
        assert meta["labels"]["app.kubernetes.io/part-of"] == "turnpike"
        assert meta["labels"][LABEL_MODEL_DEPLOYMENT] == "llama"
        assert "ownerReferences" not in meta


def test_labels_of_a_very_long_name_are_valid_label_values() -> None:
    md = make_md("a" * 100 + ".example.com")
    for obj in all_objects(md):
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63
            assert value[0].isalnum() and value[-1].isalnum()


def test_owner_reference_makes_the_model_deployment_the_controller() -> None:
    ref = owner_reference(API_VERSION, "ModelDeployment", "llama", "u-1")
    assert ref == {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "name": "llama",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
