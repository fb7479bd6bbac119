"""The children a ModelDeployment should have, owned and hashed, ready to apply."""

from __future__ import annotations

from typing import Any

from turnpike.api.constants import API_VERSION
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.reconcile.diff import with_hash
from turnpike.render import owner_reference, render_deployment, render_pdb, render_service


def desired_children(
    md: ModelDeployment,
    replicas: int,
    uid: str,
    priority_class: str | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Deployment, Service and PodDisruptionBudget, in the order they are applied.

    priority_class, node_selector and tolerations come from the CapacityTier.
    """
    owner = owner_reference(API_VERSION, "ModelDeployment", md.metadata.name, uid)
    deployment = render_deployment(
        md,
        replicas,
        priority_class=priority_class,
        extra_node_selector=node_selector or None,
        extra_tolerations=tolerations or None,
    )
    children = [deployment, render_service(md), render_pdb(md, replicas)]
    owned = []
    for child in children:
        metadata = {**child["metadata"], "ownerReferences": [owner]}
        owned.append(with_hash({**child, "metadata": metadata}))
    return owned


def desired_replicas(md: ModelDeployment, current_desired: int | None) -> int:
    """Replicas to run before the autoscaler has an opinion of its own.

    Manual scaling (autoscaling off) follows spec.replicas. With autoscaling on,
    the last decision (kept in status) holds across restarts, clamped to the
    current bounds; without one the deployment starts at minReplicas.
    """
    spec = md.spec
    if not spec.autoscaling.enabled:
        return spec.replicas
    start = current_desired if current_desired is not None else spec.min_replicas
    upper = spec.max_replicas if spec.max_replicas is not None else start
    return max(spec.min_replicas, min(start, upper))
