"""kopf handlers: every watch event becomes a key on the work queue.

Only event handlers are registered (no create/update/resume handlers, no
timers or daemons), so kopf keeps no bookkeeping in users' objects: no
last-handled-configuration annotation, no progress in status, no finalizer
that would block deletion while the operator is down.
"""

from __future__ import annotations

from typing import Any

import kopf

from turnpike.api.constants import GROUP, VERSION
from turnpike.controller.workqueue import WorkQueue
from turnpike.kube import Kube
from turnpike.render.labels import LABEL_MANAGED_BY, MANAGER

CHILDREN = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
)


def owner_key(body: dict[str, Any]) -> tuple[str, str] | None:
    """The ModelDeployment that controls a child, if any."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == "ModelDeployment"
            and ref.get("apiVersion", "").startswith(f"{GROUP}/")
        ):
            return body["metadata"]["namespace"], ref["name"]
    return None


def build_registry(kube: Kube, queue: WorkQueue) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        creds = kube.credentials
        return kopf.ConnectionInfo(
            server=creds.server,
            ca_path=creds.ca_path,
            insecure=creds.insecure,
            scheme="Bearer" if creds.token else None,
            token=creds.token,
            certificate_path=creds.certificate_path,
            private_key_path=creds.private_key_path,
        )

    @kopf.on.event(GROUP, VERSION, "modeldeployments", registry=registry)
    def model_deployment_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
        if namespace is None:
            return
        if type == "DELETED":
            queue.forget((namespace, name))
        else:
            queue.add((namespace, name))

    for group, version, plural in CHILDREN:

        @kopf.on.event(
            group, version, plural, registry=registry, labels={LABEL_MANAGED_BY: MANAGER}
        )
        def child_event(body: kopf.Body, **_: Any) -> None:
            key = owner_key(dict(body))
            if key is not None:
                queue.add(key)

    return registry
