"""Observed state -> status: conditions, replicas, observedGeneration (pure)."""

from turnpike.status.conditions import Problem, deployment_status, merge_conditions
from turnpike.status.modeldeployment import condition, next_status, parse_status

__all__ = [
    "Problem",
    "condition",
    "deployment_status",
    "merge_conditions",
    "next_status",
    "parse_status",
]
