"""The apps/v1 Deployment that runs a ModelDeployment's Triton pods."""

from __future__ import annotations

import json
from typing import Any

from turnpike.api.constants import GRPC_PORT, HTTP_PORT, METRICS_PORT
from turnpike.api.modeldeployment import EnvVar, ModelDeployment
from turnpike.render.command import triton_command, uses_mpi
from turnpike.render.expansion import literal
from turnpike.render.labels import common_labels, object_meta, selector_labels
from turnpike.render.names import child_name
from turnpike.render.repository import (
    DOWNLOAD_CONTAINER,
    DOWNLOAD_SCRIPT,
    RepositoryPlan,
    download_env,
    plan_repository,
)

CONTAINER = "triton"
GPU_RESOURCE = "nvidia.com/gpu"
# Node labels set by NVIDIA GPU Feature Discovery / the GPU Operator.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
# The taint GPU node pools commonly carry so that pods without GPUs stay off them.
GPU_TAINT_KEY = "nvidia.com/gpu"

SHM_VOLUME = "dshm"
HTTP_PORT_NAME = "http"
GRPC_PORT_NAME = "grpc"
METRICS_PORT_NAME = "metrics"
HEALTH_READY = "/v2/health/ready"
HEALTH_LIVE = "/v2/health/live"

# NVIDIA's Triton images run as the unprivileged user triton-server (uid and gid 1000).
TRITON_UID = 1000
TRITON_GID = 1000

# Startup budget: a replica may take up to STARTUP_PERIOD_SECONDS ×
# STARTUP_FAILURE_THRESHOLD = 10 s × 180 = 30 minutes to become ready before the
# kubelet restarts it. Loading a large TensorRT-LLM engine or a 70B-parameter
# vLLM model from object storage routinely takes 5 to 20 minutes; liveness and
# readiness only begin once the startup probe has succeeded.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 180
# A busy server answers health checks late rather than never; one minute without
# a live answer means it is wedged.
LIVENESS_PERIOD_SECONDS = 10
LIVENESS_FAILURE_THRESHOLD = 6
READINESS_PERIOD_SECONDS = 5
READINESS_FAILURE_THRESHOLD = 3
PROBE_TIMEOUT_SECONDS = 5

# Draining: on deletion the pod first sleeps PRESTOP_SLEEP_SECONDS while the
# endpoint removal reaches every kube-proxy and load balancer (new requests still
# arrive meanwhile), then Triton gets SIGTERM, stops accepting work and waits up
# to EXIT_TIMEOUT_SECONDS for in-flight requests. The grace period covers both
# (10 + 45 < 60), so the kubelet's SIGKILL never cuts a request Triton still holds.
PRESTOP_SLEEP_SECONDS = 10
TERMINATION_GRACE_PERIOD_SECONDS = 60

REVISION_HISTORY_LIMIT = 3

# Rolling updates: one extra replica while rolling, so serving capacity is kept
# (capacity accounting charges it), or, when the tier has no GPUs for that extra
# replica, one replica replaced at a time.
MAX_SURGE = 1
SURGE_ROLLOUT = {"maxSurge": MAX_SURGE, "maxUnavailable": 0}
IN_PLACE_ROLLOUT = {"maxSurge": 0, "maxUnavailable": 1}

# Open MPI's shared-memory transport tries cross-memory attach (process_vm_readv),
# which a container without CAP_SYS_PTRACE is refused; the ranks then log errors on
# every message. TensorRT-LLM moves tensors over NCCL, so plain copies cost nothing.
MPI_ENV = ({"name": "OMPI_MCA_btl_vader_single_copy_mechanism", "value": "none"},)


def _env_entry(var: EnvVar) -> dict[str, Any]:
    if var.secret_key_ref is not None:
        ref = var.secret_key_ref
        return {"name": var.name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
    return {"name": var.name, "value": literal(var.value or "")}


def _merge_env(
    user: list[dict[str, Any]],
    defaults: tuple[dict[str, Any], ...] | list[dict[str, Any]] = (),
    forced: tuple[dict[str, Any], ...] | list[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """``defaults`` yield to a user's variable of the same name, ``forced`` do not.
    The user's order is kept. Values are literal: the renderer escapes $(NAME)."""
    forced_names = {e["name"] for e in forced}
    user = [e for e in user if e["name"] not in forced_names]
    taken = forced_names | {e["name"] for e in user}
    return [*(e for e in defaults if e["name"] not in taken), *user, *forced]


def _env_from(md: ModelDeployment) -> list[dict[str, Any]]:
    credentials = md.spec.model.credentials
    return [] if credentials is None else [{"secretRef": {"name": credentials.name}}]


def _resources(md: ModelDeployment) -> dict[str, Any]:
    """runtime.resources with the GPU count from the gpu block, which wins: GPUs are
    an extended resource, so requests must equal limits, and capacity accounting
    reads the count from spec.gpu alone. A pod holds one node's share of a replica."""
    gpus = {GPU_RESOURCE: str(md.spec.gpu.per_node)}
    wanted = md.spec.runtime.resources
    return {
        "limits": dict(sorted({**wanted.limits, **gpus}.items())),
        "requests": dict(sorted({**wanted.requests, **gpus}.items())),
    }


def _container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": TRITON_UID,
        "runAsGroup": TRITON_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security_context() -> dict[str, Any]:
    # fsGroup makes emptyDir downloads and PVCs readable by uid 1000;
    # OnRootMismatch skips the recursive chown of a large model volume once it is right.
    return {
        "fsGroup": TRITON_GID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "runAsNonRoot": True,
        "runAsUser": TRITON_UID,
        "runAsGroup": TRITON_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": HTTP_PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def _node_affinity(md: ModelDeployment) -> dict[str, Any]:
    product = md.spec.gpu.product
    expression = (
        {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [product]}
        if product
        else {"key": GPU_PRESENT_LABEL, "operator": "In", "values": ["true"]}
    )
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [expression]}]
            }
        }
    }


def _tolerations(extra: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The GPU taint plus the tier's, deduplicated and in a stable order (the
    order has no meaning, and a reordered list would roll every pod)."""
    gpu = {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
    unique = {json.dumps(t, sort_keys=True): t for t in [gpu, *(extra or [])]}
    return [unique[k] for k in sorted(unique)]


def _download_container(
    md: ModelDeployment, plan: RepositoryPlan, user_env: list[dict[str, Any]]
) -> dict[str, Any] | None:
    if plan.download is None:
        return None
    # No GPU and no resources: it only moves bytes, and the pod's effective
    # request is already the larger of it and the Triton container.
    return {
        "name": DOWNLOAD_CONTAINER,
        "image": md.spec.runtime.image,
        "command": ["python3", "-c", DOWNLOAD_SCRIPT],
        "env": _merge_env(user_env, forced=download_env(plan.download)),
        "envFrom": _env_from(md),
        "securityContext": _container_security_context(),
        "volumeMounts": list(plan.mounts),
    }


def _triton_container(
    md: ModelDeployment, plan: RepositoryPlan, user_env: list[dict[str, Any]]
) -> dict[str, Any]:
    argv = triton_command(md, plan.path)
    defaults = [*plan.env, *(MPI_ENV if uses_mpi(md) else ())]
    mounts = [*plan.mounts, {"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    return {
        "name": CONTAINER,
        "image": md.spec.runtime.image,
        "command": argv[:1],
        "args": argv[1:],
        "env": _merge_env(user_env, defaults=defaults),
        "envFrom": _env_from(md),
        "ports": [
            {"name": HTTP_PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": GRPC_PORT_NAME, "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": _resources(md),
        "startupProbe": _probe(HEALTH_READY, STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
        "readinessProbe": _probe(
            HEALTH_READY, READINESS_PERIOD_SECONDS, READINESS_FAILURE_THRESHOLD
        ),
        "livenessProbe": _probe(HEALTH_LIVE, LIVENESS_PERIOD_SECONDS, LIVENESS_FAILURE_THRESHOLD),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": _container_security_context(),
        "volumeMounts": sorted(mounts, key=lambda m: m["mountPath"]),
    }


def pod_spec(
    md: ModelDeployment,
    plan: RepositoryPlan,
    priority_class: str | None = None,
    extra_node_selector: dict[str, str] | None = None,
    extra_tolerations: list[dict[str, Any]] | None = None,
    spread: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pod every serving replica (and every node of a multi-node one) runs:
    the Triton container, the model download, placement and security. ``spread``
    is the topology spread constraint, if any."""
    user_env = [_env_entry(v) for v in md.spec.runtime.env]
    volumes = [
        *plan.volumes,
        {
            "name": SHM_VOLUME,
            "emptyDir": {"medium": "Memory", "sizeLimit": md.spec.runtime.shm_size},
        },
    ]
    spec: dict[str, Any] = {
        "affinity": _node_affinity(md),
        "automountServiceAccountToken": False,
        "containers": [_triton_container(md, plan, user_env)],
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_PERIOD_SECONDS,
        "tolerations": _tolerations(extra_tolerations),
        "volumes": sorted(volumes, key=lambda v: v["name"]),
    }
    if spread is not None:
        spec["topologySpreadConstraints"] = [spread]
    init = _download_container(md, plan, user_env)
    if init is not None:
        spec["initContainers"] = [init]
    if extra_node_selector:
        spec["nodeSelector"] = dict(sorted(extra_node_selector.items()))
    if priority_class:
        spec["priorityClassName"] = priority_class
    return spec


def scrape_annotations() -> dict[str, str]:
    return {
        "prometheus.io/path": "/metrics",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/scrape": "true",
    }


def render_deployment(
    md: ModelDeployment,
    replicas: int,
    priority_class: str | None = None,
    extra_node_selector: dict[str, str] | None = None,
    extra_tolerations: list[dict[str, Any]] | None = None,
    surge: bool = True,
) -> dict[str, Any]:
    """The Deployment for ``md`` at ``replicas`` replicas.

    ``replicas`` is an argument rather than read from the spec because the
    controller decides it (autoscaler, capacity tier); ``priority_class``,
    ``extra_node_selector`` and ``extra_tolerations`` come from the CapacityTier.

    With ``surge`` rolling updates add one replica and never go below the current
    count (maxSurge 1, maxUnavailable 0): serving capacity is kept during a
    rollout at the cost of one replica's GPUs of headroom, which capacity
    accounting counts. Without it (the tier has no GPUs for that extra replica)
    they replace one replica at a time (maxSurge 0, maxUnavailable 1), so a
    rollout never holds more GPUs than the tier granted.
    """
    if replicas < 0:
        raise ValueError(f"replicas must not be negative, got {replicas}")
    name = child_name(md.metadata.name)
    selector = selector_labels(md)
    spread = {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": selector},
        # Spread each revision on its own, so a rollout's new pods are not
        # pushed onto the nodes the old ones are about to free.
        "matchLabelKeys": ["pod-template-hash"],
    }
    pod = pod_spec(
        md,
        plan_repository(md.spec.model),
        priority_class,
        extra_node_selector,
        extra_tolerations,
        spread=spread,
    )
    # Deep-copied so that no two places in the tree share a dict: a caller that
    # edits one label map or env entry must not silently edit another.
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(md, name),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": dict(SURGE_ROLLOUT if surge else IN_PLACE_ROLLOUT),
            },
            "template": {
                "metadata": {
                    "labels": common_labels(md),
                    "annotations": scrape_annotations(),
                },
                "spec": pod,
            },
        },
    }
    # The selector and env entries appear in several places of the tree. A JSON
    # round trip (unlike copy.deepcopy, which preserves aliasing) makes every
    # occurrence its own dict, so a caller that edits one (the controller adding
    # a label, say) cannot silently edit the others; it also proves the object
    # serialises.
    fresh: dict[str, Any] = json.loads(json.dumps(deployment))
    return fresh
