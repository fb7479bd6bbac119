"""The Service in front of a ModelDeployment's pods, and the URL clients use."""

from __future__ import annotations

from typing import Any

from turnpike.api.constants import GRPC_PORT, HTTP_PORT, METRICS_PORT
from turnpike.api.constants import LWS_WORKER_INDEX_LABEL as WORKER_INDEX_LABEL
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.render.deployment import GRPC_PORT_NAME, HTTP_PORT_NAME, METRICS_PORT_NAME
from turnpike.render.labels import namespace_of, object_meta, selector_labels
from turnpike.render.names import child_name, role_name

# The role of a multi-node ModelDeployment's Service: LeaderWorkerSet creates a
# headless Service named after itself (the group's DNS names), so the Service
# clients use needs a name of its own.
SERVING_ROLE = "serving"


def service_name(md: ModelDeployment) -> str:
    if md.spec.gpu.multi_node:
        return role_name(md.metadata.name, SERVING_ROLE)
    return child_name(md.metadata.name)


def render_service(md: ModelDeployment) -> dict[str, Any]:
    """A ClusterIP Service selecting exactly the Deployment's pods. Target ports are
    named, so the Service follows the container if a port number ever changes; the
    metrics port is exposed too so that a ServiceMonitor can select it by name."""
    ports = [
        (HTTP_PORT_NAME, HTTP_PORT),
        (GRPC_PORT_NAME, GRPC_PORT),
        (METRICS_PORT_NAME, METRICS_PORT),
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(md, service_name(md)),
        "spec": {
            "type": "ClusterIP",
            "selector": serving_selector(md),
            "ports": [
                {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                for name, port in ports
            ],
        },
    }


def serving_selector(md: ModelDeployment) -> dict[str, str]:
    """The pods that serve: all of a Deployment's; a LeaderWorkerSet group's leader
    (LWS labels it worker-index 0), whose rank 0 is the only Triton that listens."""
    labels = selector_labels(md)
    if md.spec.gpu.multi_node:
        labels = {**labels, WORKER_INDEX_LABEL: "0"}
    return labels


def endpoint(md: ModelDeployment) -> str:
    """Triton's HTTP (KServe v2) base URL inside the cluster, as published in status."""
    return f"http://{service_name(md)}.{namespace_of(md)}.svc:{HTTP_PORT}"
