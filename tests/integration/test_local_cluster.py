"""The local cluster behaves like a real one: scheduling, GPUs, preemption, GC."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

import pytest

from hack.kubectl import Kubectl, eventually

pytestmark = pytest.mark.cluster

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_deployment(
    name: str,
    gpus: int,
    replicas: int = 1,
    product: str | None = None,
    priority_class: str | None = None,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "tolerations": [GPU_TOLERATION],
        "containers": [
            {
                "name": "server",
                "image": "example.invalid/triton:test",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ],
    }
    if product:
        pod_spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def pods_of(kube: Kubectl, app: str) -> list[dict[str, Any]]:
    return kube.items("pods", "-l", f"app={app}")


def is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def test_fake_gpu_nodes_are_ready_with_allocatable_gpus(kubectl: Kubectl) -> None:
    nodes = kubectl.items("nodes")
    gpu_nodes = [n for n in nodes if "nvidia.com/gpu" in n["status"].get("allocatable", {})]
    products = {n["metadata"]["labels"]["nvidia.com/gpu.product"] for n in gpu_nodes}
    assert len(products) >= 2, f"expected a mix of GPU products, got {products}"
    assert any("nvidia.com/gpu" not in n["status"].get("allocatable", {}) for n in nodes), (
        "expected some CPU-only nodes"
    )
    for node in gpu_nodes:
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.present"] == "true"
        assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) == int(
            labels["nvidia.com/gpu.count"]
        )
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node[
            "spec"
        ]["taints"]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]


def test_gpu_pod_is_scheduled_on_a_gpu_node_and_gets_a_loopback_ip(kube: Kubectl) -> None:
    kube.apply(gpu_deployment("two-gpus", gpus=2))
    pod = eventually(
        "a Ready pod", lambda: next((p for p in pods_of(kube, "two-gpus") if is_ready(p)), None)
    )
    node = kube.get("node", pod["spec"]["nodeName"])
    assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= 2
    assert ipaddress.ip_address(pod["status"]["podIP"]).is_loopback


def test_pod_needing_more_gpus_than_any_node_stays_pending(kube: Kubectl) -> None:
    kube.apply(gpu_deployment("too-big", gpus=64))

    def failed_scheduling() -> list[dict[str, Any]]:
        return [
            e
            for e in kube.items("events", "--field-selector", "reason=FailedScheduling")
            if e["involvedObject"]["name"].startswith("too-big")
        ]

    events = eventually("a FailedScheduling event", failed_scheduling)
    assert "nvidia.com/gpu" in events[0]["message"]
    pods = pods_of(kube, "too-big")
    assert pods and all(
        p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName") for p in pods
    )


def test_higher_priority_pod_preempts_a_low_priority_one(kubectl: Kubectl, kube: Kubectl) -> None:
    suffix = uuid.uuid4().hex[:6]
    low, high = f"test-low-{suffix}", f"test-high-{suffix}"
    product = "NVIDIA-A100-SXM4-80GB"
    pool = [n for n in kubectl.items("nodes", "-l", f"nvidia.com/gpu.product={product}")]
    per_node = int(pool[0]["status"]["allocatable"]["nvidia.com/gpu"])
    kubectl.apply(
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": low},
            "value": 1000,
            "preemptionPolicy": "Never",
        },
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": high},
            "value": 100000,
        },
    )
    try:
        # Whole-node pods fill every GPU of the pool.
        kube.apply(
            gpu_deployment(
                "filler", per_node, replicas=len(pool), product=product, priority_class=low
            )
        )
        eventually(
            "the pool full of low-priority pods",
            lambda: len([p for p in pods_of(kube, "filler") if is_ready(p)]) == len(pool),
            timeout=90,
        )
        before = {p["metadata"]["name"] for p in pods_of(kube, "filler")}

        kube.apply(gpu_deployment("urgent", per_node, product=product, priority_class=high))
        urgent = eventually(
            "the high-priority pod Ready",
            lambda: next((p for p in pods_of(kube, "urgent") if is_ready(p)), None),
            timeout=90,
        )
        assert urgent["spec"]["nodeName"] in {n["metadata"]["name"] for n in pool}
        running_fillers = {p["metadata"]["name"] for p in pods_of(kube, "filler") if is_ready(p)}
        assert len(before - running_fillers) >= 1, "no low-priority pod was preempted"
        # The scheduler posts its events asynchronously.
        eventually(
            "a Preempted event on the victim",
            lambda: kube.items("events", "--field-selector", "reason=Preempted"),
            timeout=30,
        )
    finally:
        kubectl.run("delete", "priorityclass", low, high, "--wait=false", check=False)


def test_deleting_a_deployment_garbage_collects_replicasets_and_pods(kube: Kubectl) -> None:
    kube.apply(gpu_deployment("short-lived", gpus=1, replicas=2))
    eventually(
        "2 Ready pods", lambda: len([p for p in pods_of(kube, "short-lived") if is_ready(p)]) == 2
    )
    assert kube.items("replicasets", "-l", "app=short-lived")
    kube.run("delete", "deployment", "short-lived", "--wait=false")
    eventually(
        "ReplicaSets and pods collected",
        lambda: (
            not kube.items("replicasets", "-l", "app=short-lived")
            and not pods_of(kube, "short-lived")
        ),
    )
