"""CapacityTier: a cluster-wide share of the GPUs, sold under one class of service.

A tier names its class (dedicated, reserved, on-demand or spot), how many GPUs
of each product its ModelDeployments may hold together, and which namespaces may
use it. The class decides the scheduling priority and whether the tier's pods
may preempt others, so cheap spot capacity is what yields when reserved or
on-demand work arrives.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from turnpike.api.base import ApiModel
from turnpike.api.modeldeployment import DNS_LABEL_PATTERN, DNSLabel, ObjectMeta
from turnpike.api.rules import Rule, rules_schema, violations
from turnpike.api.status import Condition

# The key of gpuBudget that any product (or a deployment that names none) draws from.
ANY_PRODUCT = "*"
# Values of the node label nvidia.com/gpu.product, as ModelDeployment's gpu.product.
GPU_PRODUCT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_PRODUCT_LENGTH = 63
MAX_BUDGET_ENTRIES = 16
# A PriorityClass above this is reserved for system-cluster-critical and friends.
MAX_USER_PRIORITY = 1_000_000_000
MIN_PRIORITY = -(2**31)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]
# Qualified name with an optional DNS-subdomain prefix, as label and taint keys are.
# Dots as [.]: "\." is not a valid escape in a CEL string literal.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
)
QualifiedName = Annotated[str, Field(pattern=QUALIFIED_NAME_PATTERN, max_length=316)]
# Money as decimal text, never a float: "2.50" must bill as 2.50.
PRICE_PATTERN = r"^[0-9]{1,9}([.][0-9]{1,6})?$"
Price = Annotated[str, Field(pattern=PRICE_PATTERN, max_length=16)]
CURRENCY_PATTERN = r"^[A-Z]{3}$"


class TierClass(StrEnum):
    """Class of service. Ordered from the most to the least protected."""

    DEDICATED = "dedicated"
    RESERVED = "reserved"
    ON_DEMAND = "on-demand"
    SPOT = "spot"


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


TOLERATION_RULES = (
    # The same two rules the API server applies to a pod's tolerations; checking
    # them here refuses the tier instead of every pod rendered from it.
    Rule(
        cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
        message="a toleration with operator Exists must not set a value",
        field_path=".value",
        check=lambda t: t.operator != TolerationOperator.EXISTS or not t.value,
    ),
    Rule(
        cel="(has(self.key) && self.key != '') || self.operator == 'Exists'",
        message="a toleration without a key must use operator Exists",
        field_path=".operator",
        check=lambda t: bool(t.key) or t.operator == TolerationOperator.EXISTS,
    ),
)


class Toleration(ApiModel):
    """A toleration added to the pods of the tier (core/v1 Toleration without
    tolerationSeconds: evicting GPU servers on a timer is not a tier's decision)."""

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(TOLERATION_RULES)}

    key: QualifiedName | None = Field(
        default=None, description="Taint key. Empty with operator Exists tolerates every taint."
    )
    operator: TolerationOperator = Field(
        default=TolerationOperator.EQUAL,
        description="Exists matches any value; Equal matches value exactly.",
    )
    value: LabelValue | None = Field(default=None, description="Taint value (operator Equal).")
    effect: TaintEffect | None = Field(
        default=None, description="Taint effect to tolerate. Unset: every effect."
    )

    @model_validator(mode="after")
    def _rules(self) -> Toleration:
        _raise(violations(TOLERATION_RULES, self))
        return self

    def to_pod(self) -> dict[str, Any]:
        """The toleration as a pod spec carries it."""
        return self.to_k8s()


# Structural schemas cannot constrain map keys (no propertyNames), so key formats
# are CEL rules; the same regular expressions serve Python (RE2 and re agree on them).
MATCH_LABELS_RULES = (
    Rule(
        cel="!has(self.matchLabels) || self.matchLabels.all(k, size(k) <= 316 && "
        f"k.matches('{QUALIFIED_NAME_PATTERN}'))",
        message="matchLabels keys must be label keys ([prefix/]name)",
        field_path=".matchLabels",
        check=lambda s: all(_is_qualified_name(k) for k in s.match_labels),
    ),
)


class NamespaceSelector(ApiModel):
    """Namespaces by label. Only matchLabels: matchExpressions would need a second
    implementation of label-selector semantics in the admission policy's CEL."""

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(MATCH_LABELS_RULES)}

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=16,
        description="Labels a namespace must all carry. Empty: every namespace.",
    )

    @model_validator(mode="after")
    def _rules(self) -> NamespaceSelector:
        _raise(violations(MATCH_LABELS_RULES, self))
        return self


CAPACITY_TIER_RULES = (
    Rule(
        cel="self.gpuBudget.all(p, p == '*' || (size(p) <= 63 && "
        "p.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*$')))",
        message="gpuBudget keys are GPU products (nvidia.com/gpu.product values) or '*'",
        field_path=".gpuBudget",
        check=lambda s: all(_is_budget_key(p) for p in s.gpu_budget),
    ),
    Rule(
        cel="!has(self.nodeSelector) || self.nodeSelector.all(k, size(k) <= 316 && "
        f"k.matches('{QUALIFIED_NAME_PATTERN}'))",
        message="nodeSelector keys must be label keys ([prefix/]name)",
        field_path=".nodeSelector",
        check=lambda s: all(_is_qualified_name(k) for k in s.node_selector),
    ),
    Rule(
        cel="!has(self.pricePerGpuHour) || self.pricePerGpuHour.all(p, p == '*' || "
        "(size(p) <= 63 && p.matches('^[A-Za-z0-9][A-Za-z0-9_.-]*$')))",
        message="pricePerGpuHour keys are GPU products (nvidia.com/gpu.product values) or '*'",
        field_path=".pricePerGpuHour",
        check=lambda s: all(_is_budget_key(p) for p in s.price_per_gpu_hour or {}),
    ),
    Rule(
        cel="self.class != 'dedicated' || (has(self.nodeSelector) && size(self.nodeSelector) > 0)",
        message="a dedicated tier needs a nodeSelector naming its node pool",
        field_path=".nodeSelector",
        check=lambda s: s.tier_class != TierClass.DEDICATED or bool(s.node_selector),
    ),
)


class CapacityTierSpec(ApiModel):
    """Desired state of a CapacityTier."""

    # The class is spelled ``class`` in manifests and in CEL (``self.class``:
    # unlike ``namespace``, ``class`` is not a CEL reserved word, so it needs no
    # ``__class__`` escaping; checked against kube-apiserver 1.36) and
    # ``tier_class`` in Python, where ``class`` is a keyword and ``class_`` reads
    # as a workaround. Both spellings are accepted on input (populate_by_name).

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(CAPACITY_TIER_RULES)}

    tier_class: TierClass = Field(
        alias="class",
        description=(
            "Class of service: dedicated (its own node pool), reserved (guaranteed share of "
            "the shared pool), on-demand (uses free shared GPUs, may preempt spot) or spot "
            "(lowest priority, never preempts, preempted first)."
        ),
    )
    gpu_budget: dict[str, Annotated[int, Field(ge=0, le=100_000)]] = Field(
        min_length=1,
        max_length=MAX_BUDGET_ENTRIES,
        description=(
            "Most GPUs the tier's ModelDeployments may hold together, per GPU product (the "
            "node label nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3). A deployment "
            "that names a product draws from that entry, or from '*' when the product has "
            "none; one that names no product draws from '*' only. Pools never borrow "
            "from each other. Rolling updates count their surge pod."
        ),
    )
    priority: int | None = Field(
        default=None,
        ge=MIN_PRIORITY,
        le=MAX_USER_PRIORITY,
        description=(
            "PriorityClass value of the tier's pods. Unset: derived from the class "
            "(dedicated 1000000, reserved 900000, on-demand 500000, spot 100000). Running "
            "pods keep the priority they were admitted with until they are replaced."
        ),
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=16,
        description="Node labels the tier's pods require; a dedicated tier names its pool here.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=16,
        description="Tolerations added to the tier's pods, e.g. for a tainted dedicated pool.",
    )
    namespaces: list[DNSLabel] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description=(
            "Namespaces allowed to use the tier. A namespace is allowed when it is listed "
            "here or matches namespaceSelector; with neither set, every namespace is."
        ),
    )
    namespace_selector: NamespaceSelector | None = Field(
        default=None, description="Namespaces allowed to use the tier, by label."
    )
    default: bool = Field(
        default=False,
        description=(
            "ModelDeployments without spec.tier use this tier. At most one tier should be "
            "the default; the API server cannot check that across objects, so the operator "
            "reports a DefaultConflict condition on every default tier when there are several."
        ),
    )
    price_per_gpu_hour: dict[str, Price] | None = Field(
        default=None,
        max_length=MAX_BUDGET_ENTRIES,
        description=(
            "Price of one GPU-hour per GPU product (keys as in gpuBudget; '*' prices every "
            'product without an entry of its own), as a decimal string such as "2.50". '
            "With it, status.usage shows what the last 24 h of granted GPU-hours cost."
        ),
    )
    currency: str | None = Field(
        default=None,
        pattern=CURRENCY_PATTERN,
        description="ISO 4217 code of pricePerGpuHour (e.g. USD), shown with the cost.",
    )

    @model_validator(mode="after")
    def _rules(self) -> CapacityTierSpec:
        messages = violations(CAPACITY_TIER_RULES, self)
        if len(set(self.namespaces)) != len(self.namespaces):
            # The CRD declares the list a set, so the API server refuses duplicates too.
            messages.append("namespaces must not repeat")
        _raise(messages)
        return self


# A tier's status names its consumers; a list of every one of 10,000 would exceed
# the API server's object size limit, so it names at most this many.
MAX_LISTED_CONSUMERS = 100


class TierConsumer(ApiModel):
    """One ModelDeployment drawing from the tier."""

    namespace: str
    name: str
    product: str | None = Field(default=None, description="GPU product it asked for, if any.")
    pool: str | None = Field(
        default=None, description="gpuBudget entry it draws from; unset when the tier has none."
    )
    replicas: int = Field(ge=0, description="Replicas the tier grants it.")
    gpus: int = Field(ge=0, description="GPUs the grant holds, rolling-update surge included.")
    limited: bool = Field(default=False, description="It asked for more than it was granted.")


class PoolUsage(ApiModel):
    """GPU time granted from one gpuBudget entry over the last 24 hours."""

    pool: str = Field(
        max_length=63, description="The gpuBudget entry (a GPU product, or '*') drawn from."
    )
    gpu_hours: float = Field(
        ge=0, description="GPU-hours granted to the tier's ModelDeployments from this pool."
    )
    budget_gpu_hours: float = Field(
        ge=0, description="The pool's budget × the hours covered: what full use would be."
    )
    utilization_percent: float | None = Field(
        default=None, description="gpuHours over budgetGpuHours, in percent (unset: no budget)."
    )
    cost: str | None = Field(
        default=None,
        max_length=32,
        description="gpuHours × pricePerGpuHour of each product, in spec.currency.",
    )


class ProductHours(ApiModel):
    """GPU time granted to one GPU product, per clock hour."""

    product: str = Field(
        max_length=63, description="GPU product: spec.gpu.product, or '*' when unset."
    )
    hours: list[list[int]] = Field(
        default_factory=list,
        max_length=25,
        description="[epoch hour, GPU-milliseconds granted in that hour], the last 24 hours.",
    )


class UsageBuckets(ApiModel):
    """GPU time granted per clock hour, kept in status so that a restarted operator or
    a new leader still reports the whole last 24 hours (internal). Lists, not maps: a
    status merge patch replaces a list whole but would keep a product that left a map."""

    v: int = Field(description="Encoding version.")
    since: int = Field(ge=0, description="Epoch milliseconds when metering of the tier began.")
    products: list[ProductHours] = Field(
        default_factory=list,
        max_length=2 * MAX_BUDGET_ENTRIES,
        description="Hourly GPU time per GPU product.",
    )


class TierUsageStatus(ApiModel):
    """What the tier's ModelDeployments were granted over the last 24 hours."""

    as_of: str = Field(max_length=32, description="RFC 3339 time these figures run up to.")
    window_hours: float = Field(
        ge=0,
        description=(
            "Hours covered: the current clock hour and the 23 before it, or less when "
            "metering began later."
        ),
    )
    pools: list[PoolUsage] = Field(
        default_factory=list,
        max_length=2 * MAX_BUDGET_ENTRIES,
        description="GPU-hours, utilisation and cost per gpuBudget entry.",
    )
    cost: str | None = Field(
        default=None,
        max_length=32,
        description="Cost of every pool together, in spec.currency (unset: no prices).",
    )
    currency: str | None = Field(default=None, max_length=3, description="spec.currency.")
    summary: str | None = Field(
        default=None, max_length=1024, description="The pools as one line, for kubectl get."
    )
    buckets: UsageBuckets | None = Field(
        default=None, description="Hourly GPU time behind these figures (internal)."
    )


class CapacityTierStatus(ApiModel):
    """Observed state of the CapacityTier; written by the operator."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    priority: int | None = Field(default=None, description="PriorityClass value in effect.")
    priority_class_name: str | None = Field(
        default=None, description="PriorityClass given to the tier's pods."
    )
    budget: dict[str, int] = Field(default_factory=dict, description="GPUs per pool.")
    granted: dict[str, int] = Field(
        default_factory=dict, description="GPUs granted to ModelDeployments, per pool."
    )
    in_use: dict[str, int] = Field(
        default_factory=dict, description="GPUs requested by existing pods, per pool."
    )
    free: dict[str, int] = Field(default_factory=dict, description="GPUs not granted, per pool.")
    budget_summary: str | None = Field(
        default=None, description="budget as one line, for kubectl get."
    )
    granted_summary: str | None = Field(default=None, description="granted as one line.")
    free_summary: str | None = Field(default=None, description="free as one line.")
    consumer_count: int | None = Field(
        default=None, description="How many ModelDeployments use the tier."
    )
    consumers: list[TierConsumer] = Field(
        default_factory=list,
        max_length=MAX_LISTED_CONSUMERS,
        description=f"ModelDeployments using the tier, first come first; at most "
        f"{MAX_LISTED_CONSUMERS}, those the budget limits listed first (consumerCount has "
        "them all), so the status stays far below the API server's object size limit.",
    )
    usage: TierUsageStatus | None = Field(
        default=None, description="GPU-hours granted over the last 24 hours, and their cost."
    )


# Tier names end up in PriorityClass names and in ModelDeployment.spec.tier, a
# DNS label; longer or dotted names could never be referenced.
CAPACITY_TIER_NAME_RULES = (
    Rule(
        cel="size(self.metadata.name) <= 63 && "
        "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        message="CapacityTier names are DNS labels (at most 63 characters, no dots): "
        "ModelDeployment.spec.tier refers to them",
        # No fieldPath: the CRD schema has no properties under metadata to point at.
        check=lambda t: (
            len(t.metadata.name) <= 63
            and re.fullmatch(DNS_LABEL_PATTERN, t.metadata.name) is not None
        ),
    ),
)


class CapacityTier(ApiModel):
    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["turnpike.dev/v1alpha1"] = "turnpike.dev/v1alpha1"
    kind: Literal["CapacityTier"] = "CapacityTier"
    metadata: ObjectMeta
    spec: CapacityTierSpec
    status: CapacityTierStatus | None = None

    @classmethod
    def from_k8s(cls, body: dict[str, Any]) -> CapacityTier:
        return cls.model_validate(body)

    @property
    def name(self) -> str:
        return self.metadata.name

    @model_validator(mode="after")
    def _rules(self) -> CapacityTier:
        _raise(violations(CAPACITY_TIER_NAME_RULES, self))
        return self


def _is_budget_key(key: str) -> bool:
    return key == ANY_PRODUCT or (
        len(key) <= MAX_PRODUCT_LENGTH and re.fullmatch(GPU_PRODUCT_PATTERN, key) is not None
    )


def _is_qualified_name(key: str) -> bool:
    return len(key) <= 316 and re.fullmatch(QUALIFIED_NAME_PATTERN, key) is not None


def _raise(messages: list[str]) -> None:
    if messages:
        raise ValueError("; ".join(messages))
