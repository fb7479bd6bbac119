"""Status of Turnpike objects, following kstatus conventions.

Conditions Ready / Progressing / Degraded carry observedGeneration so tools
(kubectl wait, Argo CD, Flux) can tell a stale status from a current one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from turnpike.api.base import ApiModel

ConditionStatus = Literal["True", "False", "Unknown"]
# metav1.Condition's limits.
MAX_CONDITION_REASON = 1024
MAX_CONDITION_MESSAGE = 32768


class Condition(ApiModel):
    type: str = Field(max_length=316)
    status: ConditionStatus
    reason: str = Field(max_length=MAX_CONDITION_REASON)
    message: str = Field(default="", max_length=MAX_CONDITION_MESSAGE)
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: str = Field(description="RFC 3339 time of the last status change.")


class ScalingDecision(ApiModel):
    """The autoscaler's last decision, kept so users see why replicas changed."""

    time: str
    from_replicas: int = Field(ge=0)
    to_replicas: int = Field(ge=0)
    reason: str


class AutoscalerHistory(ApiModel):
    """The autoscaler's window of samples, so a restart or a new leader neither
    flaps nor forgets (the encoding of turnpike.autoscale.history.History)."""

    v: int = Field(description="Encoding version.")
    metric: str = Field(max_length=32)
    t0: int | None = Field(default=None, description="Epoch milliseconds of the first sample.")
    since: int | None = Field(default=None, description="Epoch ms since metrics are continuous.")
    samples: list[list[float]] = Field(
        default_factory=list, max_length=200, description="[ms after t0, value, ready replicas]."
    )


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment, written by the operator only."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    replicas: int = Field(default=0, ge=0, description="Pods of the current Deployment.")
    ready_replicas: int = Field(default=0, ge=0)
    desired_replicas: int | None = Field(
        default=None, ge=0, description="Replicas the operator asked for."
    )
    queue_depth: float | None = Field(
        default=None, description="Pending requests per replica, last read from Triton."
    )
    last_scale: ScalingDecision | None = Field(
        default=None, description="The autoscaler's last change of replicas and why."
    )
    autoscaler: AutoscalerHistory | None = Field(
        default=None, description="Autoscaler window state (internal; survives restarts)."
    )
    endpoint: str | None = Field(
        default=None, description="In-cluster HTTP endpoint of the Service."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the pods (scale subresource)."
    )
    tier: str | None = Field(default=None, description="CapacityTier in effect.")
    gpus: int | None = Field(default=None, description="GPUs held by current pods.")
