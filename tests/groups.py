"""Helpers for tests of LeaderWorkerSet groups (multi-node replicas)."""

from __future__ import annotations

from typing import Any

from hack import lws
from hack.kubectl import Kubectl


def group_pods(kube: Kubectl, name: str) -> list[dict[str, Any]]:
    """The live (not terminating) pods of LeaderWorkerSet ``name``."""
    return [
        p
        for p in kube.items("pods", "-l", f"{lws.GROUP_LABEL}={name}")
        if not p["metadata"].get("deletionTimestamp")
    ]


def gpu_pods_on_h100(kubectl: Kubectl) -> list[str]:
    """Pods of any namespace holding GPUs of the kwok H100 pool (earlier tests'
    namespaces are deleted without waiting; a group needs every GPU there)."""
    found = []
    for pod in kubectl.items("pods", "--all-namespaces"):
        node = pod["spec"].get("nodeName") or ""
        limits = [c.get("resources", {}).get("limits", {}) for c in pod["spec"]["containers"]]
        if node.startswith("h100-") and any("nvidia.com/gpu" in x for x in limits):
            found.append(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")
    return found
