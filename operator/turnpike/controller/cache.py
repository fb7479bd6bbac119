"""What the operator has seen, kept current by kopf's watch events.

Capacity accounting needs every ModelDeployment of a tier and each one's
Deployment at every evaluation; reading them from the API server each time
would cost O(n) requests per reconcile. The cache is primed by one LIST per
kind before the workers start (so the first evaluation already sees every
consumer) and written through by the reconciler right after it applies a
Deployment, so serialized evaluations of one tier never see stale grants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from turnpike.api.modeldeployment import ModelDeployment
from turnpike.kube import ApiError, Kube
from turnpike.kube.resources import CAPACITY_TIER, DEPLOYMENT, MODEL_DEPLOYMENT
from turnpike.render.labels import LABEL_MANAGED_BY, MANAGER

Key = tuple[str, str]


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
            for body in await kube.list(DEPLOYMENT, namespace, label_selector=selector):
                self.deployment_seen("ADDED", body)
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
        else:
            self.models[key] = body

    def deployment_seen(self, event: str, body: dict[str, Any]) -> None:
        key = owner_key(body)
        if key is None:
            return
        if event == "DELETED":
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = body

    def tier_seen(self, event: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if event == "DELETED":
            self.tiers.pop(name, None)
        else:
            self.tiers[name] = body
