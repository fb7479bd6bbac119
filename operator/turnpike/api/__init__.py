"""The Turnpike API: pydantic models are the one source of truth for defaults,
validation and the generated CRDs under ``crds/``."""

from turnpike.api.constants import GROUP, VERSION
from turnpike.api.modeldeployment import (
    GPU,
    Autoscaling,
    Backend,
    EnvVar,
    Model,
    ModelDeployment,
    ModelDeploymentSpec,
    Runtime,
)

__all__ = [
    "GPU",
    "GROUP",
    "VERSION",
    "Autoscaling",
    "Backend",
    "EnvVar",
    "Model",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "Runtime",
]
