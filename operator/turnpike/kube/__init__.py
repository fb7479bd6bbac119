"""The one place that talks to the Kubernetes API server."""

from turnpike.kube.api import KubeAPI
from turnpike.kube.client import ApiError, Kube, connect
from turnpike.kube.resources import Resource, resource_for

__all__ = ["ApiError", "Kube", "KubeAPI", "Resource", "connect", "resource_for"]
