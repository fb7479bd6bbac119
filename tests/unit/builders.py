"""Fluent builders of the objects the shell's tests store in the fake API server.

One place that knows what a stored ModelDeployment, its Deployment, a tier and a
pod look like, so each test says only what matters to it:
``md().autoscaled(1, 8).with_status(desiredReplicas=4).build()``.
"""

from __future__ import annotations

import copy
from typing import Any

from turnpike.render.labels import LABEL_INSTANCE, LABEL_MODEL_DEPLOYMENT
from turnpike.render.names import label_value

NAMESPACE = "team-a"
NAME = "llama"
UID = "uid-llama"


class ModelDeploymentBuilder:
    def __init__(self, name: str = NAME, namespace: str = NAMESPACE) -> None:
        self._body: dict[str, Any] = {
            "apiVersion": "turnpike.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {
                "namespace": namespace,
                "name": name,
                "uid": f"uid-{name}",
                "generation": 1,
                "resourceVersion": "1",
                "creationTimestamp": "2026-11-01T00:00:00Z",
            },
            "spec": {"model": {"uri": "s3://bucket/model"}},
        }

    def spec(self, **fields: Any) -> ModelDeploymentBuilder:
        self._body["spec"].update(copy.deepcopy(fields))
        return self

    def uri(self, uri: str) -> ModelDeploymentBuilder:
        self._body["spec"]["model"]["uri"] = uri
        return self

    def replicas(self, n: int) -> ModelDeploymentBuilder:
        return self.spec(replicas=n)

    def gpus(self, tensor_parallelism: int, product: str | None = None) -> ModelDeploymentBuilder:
        gpu: dict[str, Any] = {"tensorParallelism": tensor_parallelism}
        if product is not None:
            gpu["product"] = product
        return self.spec(gpu=gpu)

    def autoscaled(self, minimum: int, maximum: int) -> ModelDeploymentBuilder:
        return self.spec(minReplicas=minimum, maxReplicas=maximum, autoscaling={"enabled": True})

    def tier(self, name: str) -> ModelDeploymentBuilder:
        return self.spec(tier=name)

    def created(self, timestamp: str) -> ModelDeploymentBuilder:
        self._body["metadata"]["creationTimestamp"] = timestamp
        return self

    def with_status(self, **status: Any) -> ModelDeploymentBuilder:
        self._body["status"] = copy.deepcopy(status)
        return self

    def build(self) -> dict[str, Any]:
        return copy.deepcopy(self._body)


class DeploymentBuilder:
    """The child Deployment a previous reconcile left, rolled out and ready."""

    def __init__(self, replicas: int, owner: str = NAME, namespace: str = NAMESPACE) -> None:
        self._body: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "namespace": namespace,
                "name": owner,
                "generation": 3,
                "resourceVersion": "50",
                "ownerReferences": [
                    {
                        "apiVersion": "turnpike.dev/v1alpha1",
                        "kind": "ModelDeployment",
                        "name": owner,
                        "uid": f"uid-{owner}",
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "replicas": replicas,
                "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            },
            "status": {
                "observedGeneration": 3,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            },
        }

    def named(self, name: str) -> DeploymentBuilder:
        self._body["metadata"]["name"] = name
        return self

    def max_surge(self, n: int) -> DeploymentBuilder:
        self._body["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = n
        return self

    def updated(self, n: int) -> DeploymentBuilder:
        """A rollout in progress: only n pods run the current template."""
        self._body["status"]["updatedReplicas"] = n
        return self

    def build(self) -> dict[str, Any]:
        return copy.deepcopy(self._body)


class TierBuilder:
    def __init__(self, name: str = "pool", gpus: int = 8, product: str = "*") -> None:
        self._body: dict[str, Any] = {
            "apiVersion": "turnpike.dev/v1alpha1",
            "kind": "CapacityTier",
            "metadata": {"name": name, "resourceVersion": "7", "generation": 1, "uid": "uid-t"},
            "spec": {"class": "on-demand", "gpuBudget": {product: gpus}},
        }

    def default(self) -> TierBuilder:
        self._body["spec"]["default"] = True
        return self

    def tier_class(self, name: str) -> TierBuilder:
        self._body["spec"]["class"] = name
        return self

    def build(self) -> dict[str, Any]:
        return copy.deepcopy(self._body)


def md(name: str = NAME, namespace: str = NAMESPACE) -> ModelDeploymentBuilder:
    return ModelDeploymentBuilder(name, namespace)


def deployment(replicas: int, owner: str = NAME) -> DeploymentBuilder:
    return DeploymentBuilder(replicas, owner)


def tier(gpus: int = 8, name: str = "pool") -> TierBuilder:
    return TierBuilder(name, gpus)


def ready_pod(i: int, owner: str = NAME, namespace: str = NAMESPACE) -> dict[str, Any]:
    """A ready pod of the ModelDeployment ``owner`` (its selector labels included)."""
    labels = {LABEL_INSTANCE: label_value(owner), LABEL_MODEL_DEPLOYMENT: label_value(owner)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": namespace, "name": f"{owner}-{i}", "labels": labels},
        "status": {
            "phase": "Running",
            "podIP": f"127.0.0.{i + 10}",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
