"""REST paths of the kinds Turnpike reads and writes.

A static table instead of discovery: the operator touches a handful of kinds,
and a lookup that cannot fail at run time is one less thing to go wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from turnpike.api.constants import API_VERSION


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [base]
        if self.namespaced and namespace is not None:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
            if subresource is not None:
                parts.append(subresource)
        return "/".join(parts)


KNOWN = (
    Resource(API_VERSION, "ModelDeployment", "modeldeployments"),
    Resource(API_VERSION, "CapacityTier", "capacitytiers", namespaced=False),
    Resource("apps/v1", "Deployment", "deployments"),
    Resource("v1", "Service", "services"),
    Resource("v1", "Pod", "pods"),
    Resource("v1", "Secret", "secrets"),
    Resource("v1", "Event", "events"),
    Resource("v1", "Namespace", "namespaces", namespaced=False),
    Resource("v1", "Node", "nodes", namespaced=False),
    Resource("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    Resource("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", namespaced=False),
    Resource("coordination.k8s.io/v1", "Lease", "leases"),
    Resource("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets"),
)
_BY_KIND = {(r.api_version, r.kind): r for r in KNOWN}


def plural_of_path(path: str) -> str:
    """'leases' from /apis/coordination.k8s.io/v1/namespaces/x/leases/y (for metrics)."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    rest = parts[2:] if parts and parts[0] == "api" else parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    return rest[0] if rest else "namespaces"


def resource_for(obj_or_api_version: dict[str, Any] | str, kind: str | None = None) -> Resource:
    if isinstance(obj_or_api_version, dict):
        key = (obj_or_api_version["apiVersion"], obj_or_api_version["kind"])
    else:
        key = (obj_or_api_version, kind or "")
    try:
        return _BY_KIND[key]
    except KeyError:
        raise KeyError(f"turnpike does not manage {key[1]} ({key[0]})") from None


DEPLOYMENT = _BY_KIND[("apps/v1", "Deployment")]
LEADER_WORKER_SET = _BY_KIND[("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")]
SERVICE = _BY_KIND[("v1", "Service")]
PDB = _BY_KIND[("policy/v1", "PodDisruptionBudget")]
POD = _BY_KIND[("v1", "Pod")]
SECRET = _BY_KIND[("v1", "Secret")]
EVENT = _BY_KIND[("v1", "Event")]
LEASE = _BY_KIND[("coordination.k8s.io/v1", "Lease")]
MODEL_DEPLOYMENT = _BY_KIND[(API_VERSION, "ModelDeployment")]
CAPACITY_TIER = _BY_KIND[(API_VERSION, "CapacityTier")]
NAMESPACE = _BY_KIND[("v1", "Namespace")]
NODE = _BY_KIND[("v1", "Node")]
PRIORITY_CLASS = _BY_KIND[("scheduling.k8s.io/v1", "PriorityClass")]
