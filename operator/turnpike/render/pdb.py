"""The PodDisruptionBudget that paces voluntary evictions of a ModelDeployment."""

from __future__ import annotations

from typing import Any

from turnpike.api.modeldeployment import ModelDeployment
from turnpike.render.labels import object_meta, selector_labels
from turnpike.render.names import child_name


def render_pdb(md: ModelDeployment, replicas: int) -> dict[str, Any]:
    """Node drains evict at most one replica at a time.

    ``maxUnavailable: 1`` rather than a ``minAvailable`` derived from ``replicas``:
    it stays correct as the autoscaler changes the replica count, so the budget
    never has to be rewritten, and a single-replica deployment can still be
    drained instead of blocking node maintenance forever. ``replicas`` is
    accepted for symmetry with :func:`render_deployment` and does not change the
    budget.

    ``unhealthyPodEvictionPolicy: AlwaysAllow`` lets a drain evict pods that are
    not ready (crash-looping, or still loading a model for up to half an hour):
    they serve nothing, and counting them against the budget would stall the drain.
    """
    del replicas
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(md, child_name(md.metadata.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(md)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
