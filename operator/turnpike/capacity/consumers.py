"""Stored ModelDeployments and Deployments -> ledger consumers (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from turnpike.api.capacitytier import CapacityTier
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.capacity.ledger import Consumer, pool_for
from turnpike.capacity.tierstatus import resolve_tier


def surges(deployment: dict[str, Any]) -> bool:
    """Whether the workload's rollouts add replicas (maxSurge above 0; a
    Deployment's default is 25%, a LeaderWorkerSet's 0). The renderer uses
    maxSurge 0 when the tier has no GPUs for the extra replica (or group)."""
    spec = deployment.get("spec", {})
    if deployment.get("kind") == "LeaderWorkerSet":
        strategy = spec.get("rolloutStrategy") or {}
        config = strategy.get("rollingUpdateConfiguration") or {}
        return str(config.get("maxSurge", 0)) not in ("0", "0%")
    strategy = spec.get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return False
    max_surge = (strategy.get("rollingUpdate") or {}).get("maxSurge", "25%")
    return str(max_surge) not in ("0", "0%")


def rolling(deployment: dict[str, Any] | None) -> bool:
    """A rollout holds one surge replica's GPUs until it settles (if it surges).
    A LeaderWorkerSet reports no observedGeneration: its counts alone say."""
    if deployment is None or not surges(deployment):
        return False
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    desired = int(spec.get("replicas", 0))
    generation = deployment.get("metadata", {}).get("generation")
    unseen = (
        not status
        if deployment.get("kind") == "LeaderWorkerSet"
        else status.get("observedGeneration") != generation
    )
    return desired > 0 and (
        unseen
        or int(status.get("updatedReplicas", 0)) < desired
        or int(status.get("replicas", 0)) > desired
    )


def consumer(
    md: ModelDeployment,
    created_at: str,
    deployment: dict[str, Any] | None,
    desired: int | None = None,
    namespace_labels: Mapping[str, str] | None = None,
) -> Consumer:
    """The tier's view of one ModelDeployment; desired defaults to what it runs."""
    current = int((deployment or {}).get("spec", {}).get("replicas", 0))
    spec = md.spec
    minimum = spec.min_replicas if spec.autoscaling.enabled else spec.replicas
    return Consumer(
        namespace=md.metadata.namespace or "",
        name=md.metadata.name,
        gpus_per_replica=spec.gpu.per_replica,
        desired_replicas=current if desired is None else desired,
        created_at=created_at,
        product=spec.gpu.product,
        min_replicas=minimum,
        current_replicas=current,
        rolling=rolling(deployment),
        namespace_labels=dict(namespace_labels or {}),
    )


def consumers_of(
    tier: CapacityTier,
    tiers: list[CapacityTier],
    models: Iterable[tuple[ModelDeployment, str, dict[str, Any] | None]],
    default_tier: str | None = None,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Consumer]:
    """Every ModelDeployment that resolves to tier, as it stands now."""
    labels = namespace_labels or {}
    out = []
    for md, created, deployment in models:
        resolved = resolve_tier(md.spec.tier or default_tier, tiers).tier
        if resolved is not None and resolved.name == tier.name:
            ns = md.metadata.namespace or ""
            out.append(consumer(md, created, deployment, namespace_labels=labels.get(ns)))
    return out


def in_use_by_pool(
    tier: CapacityTier,
    consumers: Iterable[Consumer],
    deployments: Mapping[tuple[str, str], dict[str, Any]],
) -> dict[str, int]:
    """GPUs requested by the tier's existing pods (status.replicas counts surge pods)."""
    usage: dict[str, int] = {}
    for c in consumers:
        pool = pool_for(tier.spec.gpu_budget, c.product) or c.product or "*"
        pods = int(
            (deployments.get((c.namespace, c.name)) or {}).get("status", {}).get("replicas", 0)
        )
        usage[pool] = usage.get(pool, 0) + pods * c.gpus_per_replica
    return usage
