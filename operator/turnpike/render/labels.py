"""Labels and metadata shared by every object rendered for a ModelDeployment."""

from __future__ import annotations

from typing import Any

from turnpike.api.constants import GROUP
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.render.names import label_value

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
# Lets the controller and users list everything that belongs to one ModelDeployment
# (kubectl get all -l turnpike.dev/model-deployment=llama).
LABEL_MODEL_DEPLOYMENT = f"{GROUP}/model-deployment"

COMPONENT = "inference-server"
MANAGER = "turnpike"


def namespace_of(md: ModelDeployment) -> str:
    """The namespace children are created in. Objects read from the API server always
    have one; a missing namespace means a caller built the object by hand, and
    guessing ``default`` would put children where the owner reference cannot reach."""
    if not md.metadata.namespace:
        raise ValueError(f"ModelDeployment {md.metadata.name!r} has no namespace")
    return md.metadata.namespace


def selector_labels(md: ModelDeployment) -> dict[str, str]:
    """The pod selector of the Deployment, Service and PodDisruptionBudget.

    A Deployment's selector is immutable, so it holds only labels that can never
    change for the life of the ModelDeployment (both derive from its name).
    """
    value = label_value(md.metadata.name)
    return {LABEL_INSTANCE: value, LABEL_MODEL_DEPLOYMENT: value}


def selector(md: ModelDeployment) -> str:
    """selector_labels as a label selector string (status.selector, pod listing)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(md).items()))


def common_labels(md: ModelDeployment) -> dict[str, str]:
    value = label_value(md.metadata.name)
    return dict(
        sorted(
            {
                LABEL_NAME: value,
                LABEL_COMPONENT: COMPONENT,
                LABEL_MANAGED_BY: MANAGER,
                LABEL_PART_OF: MANAGER,
                **selector_labels(md),
            }.items()
        )
    )


def object_meta(md: ModelDeployment, name: str) -> dict[str, Any]:
    """Metadata of a child. Owner references are left to the controller, which knows
    the ModelDeployment's uid only once it has been stored."""
    return {"name": name, "namespace": namespace_of(md), "labels": common_labels(md)}


def owner_reference(md_api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    """The reference that makes a child garbage-collected with its ModelDeployment.

    ``controller`` marks the ModelDeployment as the one object that manages the
    child (kopf and kubectl rely on it); ``blockOwnerDeletion`` keeps a
    foreground delete of the ModelDeployment waiting until its pods are gone, so
    their GPUs are free when the delete returns.
    """
    return {
        "apiVersion": md_api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
