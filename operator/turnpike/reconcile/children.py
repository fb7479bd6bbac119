"""The children a ModelDeployment should have, owned and hashed, ready to apply."""

from __future__ import annotations

import json
from typing import Any

from turnpike.api.constants import API_VERSION
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.reconcile.diff import with_hash
from turnpike.render import owner_reference, render_deployment, render_pdb, render_service
from turnpike.render.leaderworkerset import render_leaderworkerset
from turnpike.render.mpikeys import MpiKeys, render_mpi_secret
from turnpike.status.conditions import Problem

# The kinds that run a ModelDeployment's pods: a Deployment, or a LeaderWorkerSet
# when a replica spans nodes (gpu.nodesPerReplica above 1).
WORKLOAD_KINDS = ("Deployment", "LeaderWorkerSet")


def is_workload(child: dict[str, Any]) -> bool:
    return child.get("kind") in WORKLOAD_KINDS


# etcd refuses objects above 1.5 MiB (its default --max-request-bytes) and the API
# server requests above 3 MiB; a child stays well below both, leaving room for
# the metadata (managedFields, status) the API server adds.
MAX_CHILD_BYTES = 1024 * 1024


def desired_children(
    md: ModelDeployment,
    replicas: int,
    uid: str,
    priority_class: str | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    surge: bool = True,
    mpi_keys: MpiKeys | None = None,
) -> list[dict[str, Any]]:
    """The workload (a Deployment, or a LeaderWorkerSet when replicas span nodes),
    Service and PodDisruptionBudget, in the order they are applied; for a
    multi-node workload first the Secret of its ssh keys, when ``mpi_keys`` is given.

    priority_class, node_selector, tolerations and surge (whether the tier has
    GPUs for a rollout's extra replica) come from the CapacityTier.
    """
    owner = owner_reference(API_VERSION, "ModelDeployment", md.metadata.name, uid)
    render = render_leaderworkerset if md.spec.gpu.multi_node else render_deployment
    workload = render(
        md,
        replicas,
        priority_class=priority_class,
        extra_node_selector=node_selector or None,
        extra_tolerations=tolerations or None,
        surge=surge,
    )
    children = [workload, render_service(md), render_pdb(md, replicas)]
    if md.spec.gpu.multi_node and mpi_keys is not None:
        children.insert(0, render_mpi_secret(md, mpi_keys))
    owned = []
    for child in children:
        metadata = {**child["metadata"], "ownerReferences": [owner]}
        owned.append(with_hash({**child, "metadata": metadata}))
    return owned


def object_bytes(obj: dict[str, Any]) -> int:
    """Size of ``obj`` as the API server receives it (compact JSON, UTF-8)."""
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def too_large(children: list[dict[str, Any]]) -> Problem | None:
    """A Problem when a child could not be stored. Admission bounds every field that
    grows a child, so this guards only against a future field that forgets to."""
    for child in children:
        size = object_bytes(child)
        if size > MAX_CHILD_BYTES:
            return Problem(
                "RenderedTooLarge",
                f"the {child['kind']} rendered from this spec would be {size} bytes, more "
                f"than the {MAX_CHILD_BYTES} an object may have; shorten runtime.args, "
                "runtime.env or the model URI",
            )
    return None


def desired_replicas(md: ModelDeployment, current_desired: int | None) -> int:
    """Replicas to run before the autoscaler has an opinion of its own.

    Manual scaling (autoscaling off) follows spec.replicas. With autoscaling on,
    the last decision (kept in status) holds across restarts, clamped to the
    current bounds; without one the deployment starts at minReplicas, and at one
    when that is zero: a new deployment is tried once (a model that cannot load
    shows at once, not at the first request after an idle window).
    """
    spec = md.spec
    if not spec.autoscaling.enabled:
        return spec.replicas
    start = current_desired if current_desired is not None else max(spec.min_replicas, 1)
    upper = spec.max_replicas if spec.max_replicas is not None else start
    return max(spec.min_replicas, min(start, upper))
