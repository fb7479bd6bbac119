"""What the operator has seen, kept current by kopf's watch events.

Capacity accounting needs every ModelDeployment of a tier and each one's
Deployment at every evaluation; reading them from the API server each time
would cost O(n) requests per reconcile. The cache is primed by one LIST per
kind before the workers start (so the first evaluation already sees every
consumer) and written through by the reconciler right after it applies a
Deployment, so serialized evaluations of one tier never see stale grants.

Reconciles read children from here too, as controller-runtime reads from its
informers. That view is fed by the watch alone, never by our own write
responses: the watch delivers each object's changes in order, so its last
event is the truth, while an apply's response can arrive after newer events
(kube-controller-manager marking the new Deployment ready) and would leave an
old object behind with nothing left to correct it. A child the watch has not
shown yet is applied again, which a server-side apply makes harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from turnpike.api.modeldeployment import ModelDeployment
from turnpike.kube import ApiError, Kube
from turnpike.kube.resources import (
    CAPACITY_TIER,
    DEPLOYMENT,
    MODEL_DEPLOYMENT,
    PDB,
    SERVICE,
    Resource,
)
from turnpike.render.labels import LABEL_MANAGED_BY, MANAGER

Key = tuple[str, str]
ChildKey = tuple[str, str, str]  # kind, namespace, name
CHILD_RESOURCES = (DEPLOYMENT, SERVICE, PDB)


def owner_key(body: dict[str, Any]) -> Key | None:
    """The ModelDeployment that controls a child, if any."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "ModelDeployment":
            return body["metadata"]["namespace"], ref["name"]
    return None


@dataclass
class Cache:
    models: dict[Key, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[Key, dict[str, Any]] = field(default_factory=dict)
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: dict[ChildKey, dict[str, Any]] = field(default_factory=dict)
    # The resourceVersion each ModelDeployment got from our own last status write:
    # its watch event carries nothing new, so it need not queue another reconcile.
    _own_writes: dict[Key, str] = field(default_factory=dict)
    # Parsed specs by resourceVersion: every tier evaluation reads all of a tier's
    # consumers, and parsing each one again would make a reconcile O(n) in pydantic.
    _parsed: dict[Key, tuple[str, ModelDeployment | None]] = field(default_factory=dict)

    def parsed_model(self, key: Key) -> ModelDeployment | None:
        """The cached object as a ModelDeployment, or None when it is invalid."""
        body = self.models.get(key)
        if body is None:
            return None
        version = str(body["metadata"].get("resourceVersion", ""))
        hit = self._parsed.get(key)
        if hit is None or hit[0] != version:
            try:
                hit = (version, ModelDeployment.from_k8s(body))
            except ValidationError:
                hit = (version, None)
            self._parsed[key] = hit
        return hit[1]

    async def prime(self, kube: Kube, namespaces: tuple[str, ...] = ()) -> None:
        """One LIST per kind (per watched namespace when the operator is scoped)."""
        scopes: tuple[str | None, ...] = namespaces or (None,)
        selector = f"{LABEL_MANAGED_BY}={MANAGER}"
        for namespace in scopes:
            for body in await kube.list(MODEL_DEPLOYMENT, namespace):
                self.model_seen("ADDED", body)
            for resource in CHILD_RESOURCES:
                for body in await kube.list(resource, namespace, label_selector=selector):
                    # A LIST's items carry no kind; the watch events that follow do.
                    self.child_seen("ADDED", _typed(body, resource))
        try:
            tiers = await kube.list(CAPACITY_TIER)
        except ApiError as error:
            if not error.not_found:  # the CapacityTier CRD is optional
                raise
            tiers = []
        for body in tiers:
            self.tier_seen("ADDED", body)

    def model_seen(self, event: str, body: dict[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event == "DELETED":
            self.models.pop(key, None)
            self._parsed.pop(key, None)
            self._own_writes.pop(key, None)
        else:
            self.models[key] = body

    def child_seen(self, event: str, body: dict[str, Any]) -> None:
        """A Deployment, Service or PodDisruptionBudget Turnpike manages."""
        metadata = body["metadata"]
        key = (body["kind"], metadata["namespace"], metadata["name"])
        if event == "DELETED":
            self.children.pop(key, None)
        else:
            self.children[key] = body
        if body["kind"] == "Deployment":
            self.deployment_seen(event, body)

    def child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.children.get((kind, namespace, name))

    def status_written(self, key: Key, body: dict[str, Any]) -> None:
        """Remember the object our own status patch produced."""
        self._own_writes[key] = str(body["metadata"].get("resourceVersion", ""))

    def is_own_write(self, body: dict[str, Any]) -> bool:
        """Whether this is exactly the object our last status patch returned."""
        metadata = body["metadata"]
        written = self._own_writes.get((metadata["namespace"], metadata["name"]))
        return written is not None and written == metadata.get("resourceVersion")

    def deployment_seen(self, event: str, body: dict[str, Any]) -> None:
        """Capacity's view: the watch's events and our own applies, newest first."""
        key = owner_key(body)
        if key is None:
            return
        if event == "DELETED":
            self.deployments.pop(key, None)
            return
        known = self.deployments.get(key)
        if known is None or not older(body, known):
            self.deployments[key] = body

    def tier_seen(self, event: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if event == "DELETED":
            self.tiers.pop(name, None)
        else:
            self.tiers[name] = body


def older(candidate: dict[str, Any], known: dict[str, Any]) -> bool:
    """Whether candidate is an earlier version of known.

    Resource versions of one kind compare as decimal integers (KEP-5504,
    stable since Kubernetes 1.35); anything else is taken as not older.
    """
    a = str(candidate["metadata"].get("resourceVersion", ""))
    b = str(known["metadata"].get("resourceVersion", ""))
    return a.isdigit() and b.isdigit() and int(a) < int(b)


def _typed(body: dict[str, Any], resource: Resource) -> dict[str, Any]:
    return {**body, "apiVersion": resource.api_version, "kind": resource.kind}
