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


class ColdStart(ApiModel):
    """The last wake from zero: when held requests woke the deployment and when its
    first replica was ready, so users see what a request at zero waits."""

    woken: str = Field(description="When the autoscaler asked for a replica at zero (RFC 3339).")
    ready: str | None = Field(default=None, description="When the first replica was ready.")
    seconds: float | None = Field(
        default=None, ge=0, description="From woken to ready: the cold-start time."
    )


class Group(ApiModel):
    """One replica of a multi-node ModelDeployment: a LeaderWorkerSet group."""

    index: int = Field(ge=0, description="The group's index (LWS group-index).")
    ready: bool = Field(description="Every pod of the group is ready.")
    pods_ready: int = Field(default=0, ge=0, description="Pods of the group that are ready.")
    pods: int = Field(default=0, ge=0, description="Pods of the group that exist.")
    leader: str | None = Field(default=None, description="The leader pod's name.")
    leader_uid: str | None = Field(
        default=None, description="The leader pod's uid: a new one means the group restarted."
    )
    since: str | None = Field(default=None, description="When the leader pod was created.")
    restarts: int = Field(
        default=0,
        ge=0,
        description="Times the operator saw this group recreated (a pod failed or was deleted, "
        "and LeaderWorkerSet restarted the whole group).",
    )
    last_restart: str | None = Field(default=None, description="When it was last recreated.")
    waiting_on: str | None = Field(
        default=None,
        max_length=1024,
        description="The pod that holds the group back from ready, and why.",
    )


class AutoscalerHistory(ApiModel):
    """The autoscaler's window of samples, so a restart or a new leader neither
    flaps nor forgets (the encoding of turnpike.autoscale.history.History)."""

    v: int = Field(description="Encoding version.")
    metric: str = Field(max_length=32)
    t0: int | None = Field(default=None, description="Epoch milliseconds of the first sample.")
    since: int | None = Field(default=None, description="Epoch ms since metrics are continuous.")
    busy: int | None = Field(
        default=None,
        description="Epoch ms of the last sample with work (queued, executing or held).",
    )
    samples: list[list[float]] = Field(
        default_factory=list, max_length=200, description="[ms after t0, value, ready replicas]."
    )


class SLOBuckets(ApiModel):
    """The counts behind status.slo, so a restart or a new leader keeps the window
    (the encoding of turnpike.slo.window.Window)."""

    v: int = Field(description="Encoding version.")
    key: str = Field(max_length=128, description="The SLO these counts measure.")
    fine: list[list[float]] = Field(
        default_factory=list,
        max_length=120,
        description="[epoch minute, requests, good, good lower bound] per minute.",
    )
    coarse: list[list[float]] = Field(
        default_factory=list,
        max_length=400,
        description="[epoch minute, requests, good, good lower bound] per coarse bucket.",
    )


class SLOStatus(ApiModel):
    """How the deployment does against spec.slo (see docs/slo.md for the method)."""

    method: str = Field(
        max_length=64,
        description=(
            "How good requests are counted. tritonMean: each pod's mean latency per scrape "
            "interval decides for all requests of that interval (exact when they lie on one "
            "side of the threshold). gateway: the Turnpike gateways in front counted each "
            "request they relayed, from arrival to last byte (exact; requests sent to the "
            "Service directly are not seen)."
        ),
    )
    attainment: str | None = Field(
        default=None, max_length=16, description="attainmentPercent as text, for kubectl get."
    )
    attainment_percent: float | None = Field(
        default=None, description="Good requests over the window, in percent (estimate)."
    )
    attainment_lower_bound_percent: float | None = Field(
        default=None,
        description=(
            "A guaranteed lower bound of attainmentPercent from the same data (Markov's "
            "inequality on each interval's mean)."
        ),
    )
    requests: int = Field(default=0, ge=0, description="Requests counted in the window.")
    window_covered_minutes: float = Field(
        default=0, ge=0, description="How much of the window has measurements."
    )
    error_budget_remaining_percent: float | None = Field(
        default=None,
        description="Share of the window's error budget not yet spent (negative: overspent).",
    )
    burn_rate: float | None = Field(
        default=None,
        description=(
            "Error budget spending over the last 5 minutes, in multiples of the sustainable "
            "rate (1: the budget lasts exactly the window)."
        ),
    )
    burn_rate_hour: float | None = Field(default=None, description="The same over the last hour.")
    latency_ms: float | None = Field(
        default=None, description="Mean latency (ms) of the SLO's kind over the last interval."
    )
    buckets: SLOBuckets | None = Field(
        default=None, description="Measurement window state (internal; survives restarts)."
    )


# A deployment that changes tier or GPU product starts a new series of counters;
# status keeps this many (the current one included), enough for every move a
# deployment makes in practice while staying small.
MAX_USAGE_SERIES = 8
# Bounds on stored totals (a billion GPU-seconds is 32 GPU-years, a quadrillion
# requests more than any fleet serves): an edited status beyond them is refused
# as unreadable instead of overflowing the meter's arithmetic.
MAX_METERED = 1e15


class UsageSeries(ApiModel):
    """One (tier, product) pair's part of the totals: the values of the exported
    counters with these labels, so they continue where they were after a restart."""

    tier: str = Field(
        max_length=63, description="CapacityTier in effect while counted ('' for none)."
    )
    product: str = Field(
        max_length=63, description="GPU product: spec.gpu.product, or '*' when unset."
    )
    gpu_seconds_granted: float = Field(
        ge=0, le=MAX_METERED, description="GPU-seconds granted under this tier and product."
    )
    gpu_seconds_ready: float = Field(
        ge=0, le=MAX_METERED, description="GPU-seconds of ready pods under this tier and product."
    )


class ModelDeploymentUsage(ApiModel):
    """What the GPU meter counted for this deployment since metering began, stored so
    that a restarted operator or a new leader continues instead of starting over."""

    gpu_seconds_granted: float = Field(
        ge=0,
        le=MAX_METERED,
        description=(
            "GPU-seconds granted: the integral over time of the replicas the operator "
            "granted × GPUs per replica."
        ),
    )
    gpu_seconds_ready: float = Field(
        ge=0,
        le=MAX_METERED,
        description=(
            "GPU-seconds of ready pods: the integral over time of the GPUs of the pods whose "
            "Ready condition is True (terminating pods excluded)."
        ),
    )
    requests_served: int = Field(
        ge=0,
        le=MAX_METERED,
        description=(
            "Requests completed by the pods (Triton's success and failure counters), counted "
            "between scrapes while the autoscaler or the SLO reads them."
        ),
    )
    as_of: str = Field(
        max_length=32,
        description=(
            "RFC 3339 time the totals run up to. An operator that starts later resumes from "
            "here and adds the time since from what it can still see: the granted replicas "
            "and each ready pod's Ready transition time."
        ),
    )
    series: list[UsageSeries] = Field(
        default_factory=list,
        max_length=MAX_USAGE_SERIES,
        description=(
            "The totals by tier and GPU product, as the operator's counters export them; "
            f"the {MAX_USAGE_SERIES} most recent pairs."
        ),
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
    slo: SLOStatus | None = Field(default=None, description="Measured against spec.slo.")
    usage: ModelDeploymentUsage | None = Field(
        default=None, description="GPU time and requests metered for this deployment."
    )
    cold_start: ColdStart | None = Field(
        default=None, description="The last scale from zero and how long it took."
    )
    groups: list[Group] | None = Field(
        default=None,
        max_length=100,
        description="Multi-node replicas (gpu.nodesPerReplica above 1): each LeaderWorkerSet "
        "group, whether it is ready, which pod holds it back and how often it restarted "
        "(the first 100 groups).",
    )
