"""Helpers for tests whose ModelDeployment pods run on the real node.

The pods are started by the kubelet from exactly what Turnpike rendered: the
local CPU Triton image (``hack/images``), the Python backend and the ``sleepy``
model of ``hack/triton/model_repository``, which arrives the ways users ship a
model repository: a PersistentVolumeClaim, an HTTP tarball, or a
Hub-compatible endpoint. The servers for the last two listen on the real node's
bridge address (a harness address, ``hack/netrule.py``), the only host address
a pod can reach (``hack/modelserver.py``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from hack import realnode
from hack.kubectl import Kubectl, eventually
from hack.modelserver import MODEL, ModelServer, model_server

__all__ = ["MODEL", "ModelServer", "model_server"]

REPO = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO / "hack" / "triton" / "model_repository"
# The real node's GPU product (hack/cluster-shape.yaml): pinning it puts a
# ModelDeployment's pods on the real node and nowhere else.
REAL_PRODUCT = "NVIDIA-L4"


@functools.cache
def node_image(stem: str) -> str:
    """The ref of one of the real node's images, present in its containerd."""
    from hack import localcluster

    return realnode.image_ref(realnode.node_images(localcluster._read_state()), stem)


def triton_image() -> str:
    """The local CPU Triton image."""
    return node_image("tritonserver-cpu")


def real_md(name: str, uri: str, **spec: Any) -> dict[str, Any]:
    """A ModelDeployment whose pods run on the real node with the CPU Triton image."""
    runtime = {"image": triton_image(), "shmSize": "64Mi", **spec.pop("runtime", {})}
    body: dict[str, Any] = {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": uri, "backend": "python", "name": MODEL, **spec.pop("model", {})},
            "gpu": {"count": 1, "product": REAL_PRODUCT},
            "runtime": runtime,
            **spec,
        },
    }
    return body


def slo_scaled_md(name: str, tier: str, threshold_ms: float = 120) -> dict[str, Any]:
    """A ModelDeployment in ``tier`` that only its SLO scales (1 to 3 replicas): request
    latency within ``threshold_ms`` for half the requests over 5 minutes (windows short
    enough for a test), and a queue target no load here reaches."""
    return real_md(
        name,
        "pvc://models",
        tier=tier,
        minReplicas=1,
        maxReplicas=3,
        slo={
            "latency": "requestLatency",
            "thresholdMilliseconds": threshold_ms,
            "objectivePercent": 50,
            "windowMinutes": 5,
        },
        autoscaling={
            "enabled": True,
            "target": 50,
            "scrapeIntervalSeconds": 1,
            "panicWindowSeconds": 2,
            "stabilizationWindowSeconds": 600,
        },
    )


def local_volume(kube: Kubectl, name: str) -> None:
    """A PersistentVolume on the real node holding the model repository, and its claim.

    A ``local`` volume, as a platform team would give a node's NVMe: the claim
    binds to it by name, and the pod is placed where the data is.
    """
    namespace = kube.namespace
    assert namespace is not None
    node = f"{realnode_pool_name()}-0"
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{name}"[:253]},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": name},
                "local": {"path": str(MODEL_REPOSITORY)},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [node],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": f"{namespace}-{name}"[:253],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )


def realnode_pool_name() -> str:
    from hack import localcluster

    pools = realnode.real_pools(localcluster.load_shape())
    assert pools, "the cluster shape has no real node"
    return pools[0].name


def real_node_pods(kubectl: Kubectl) -> list[dict[str, Any]]:
    """Pods of every namespace bound to the real node, terminating ones included."""
    node = f"{realnode_pool_name()}-0"
    return kubectl.items("pods", "--all-namespaces", "--field-selector", f"spec.nodeName={node}")


def wait_real_node_idle(kubectl: Kubectl, timeout: float = 120) -> None:
    """Wait until no pod holds the real node (earlier tests' namespaces are deleted
    without waiting, and a draining Triton pod keeps its GPU for its grace period)."""
    eventually(
        "the real node free of other pods",
        lambda: not real_node_pods(kubectl) or None,
        timeout=timeout,
        interval=1,
    )


def kube_proxy_backlog_s() -> float | None:
    """Seconds of Service/EndpointSlice changes the real node's kube-proxy has queued
    but not yet written to nftables (0 when caught up; None if it cannot be read)."""
    import urllib.request

    from hack import localcluster

    port = localcluster._read_state()["ports"]["kube_proxy_metrics"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    synced: dict[str, float] = {}
    queued: dict[str, float] = {}
    for line in text.splitlines():
        series, _, value = line.partition(" ")
        name, _, labels = series.partition("{")
        if name == "kubeproxy_sync_proxy_rules_last_timestamp_seconds":
            synced[labels] = float(value)
        elif name == "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds":
            queued[labels] = float(value)
    if not synced:
        return None
    # One series per IP family: the backlog is the family furthest behind.
    return max(max(0.0, queued.get(family, 0.0) - at) for family, at in synced.items())


def wait_kube_proxy_synced(timeout: float = 120) -> None:
    """Wait until kube-proxy has written every queued change. Earlier tests delete
    namespaces holding hundreds of Services; while kube-proxy works through them, an
    endpoint removal can take longer to reach nftables than a pod's preStop sleep,
    which is the harness's backlog, not what a rollout test measures."""
    eventually(
        "kube-proxy caught up with queued Service changes",
        lambda: kube_proxy_backlog_s() == 0.0 or None,
        timeout=timeout,
        interval=1,
    )
