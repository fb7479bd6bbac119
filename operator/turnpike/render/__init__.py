"""Rendering: a ModelDeployment in, plain Kubernetes objects out.

Every function here is pure (no I/O, clock or randomness) and deterministic, so
the controller can compare what it renders with what is in the cluster and the
unit tests need no cluster.
"""

from turnpike.render.command import triton_command
from turnpike.render.deployment import render_deployment
from turnpike.render.labels import (
    LABEL_MODEL_DEPLOYMENT,
    common_labels,
    owner_reference,
    selector,
    selector_labels,
)
from turnpike.render.names import child_name, label_value
from turnpike.render.pdb import render_pdb
from turnpike.render.service import endpoint, render_service, service_name

__all__ = [
    "LABEL_MODEL_DEPLOYMENT",
    "child_name",
    "common_labels",
    "endpoint",
    "label_value",
    "owner_reference",
    "render_deployment",
    "render_pdb",
    "render_service",
    "selector",
    "selector_labels",
    "service_name",
    "triton_command",
]
