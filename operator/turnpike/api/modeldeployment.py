"""ModelDeployment: one model served by a fleet of Triton pods on GPUs."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from turnpike.api import quantity as q
from turnpike.api import uris
from turnpike.api.base import ApiModel
from turnpike.api.constants import DEFAULT_RUNTIME_IMAGE
from turnpike.api.rules import Rule, rules_schema, violations

# Kubernetes resource.Quantity, e.g. "1Gi", "500m", "2" (never negative).
QUANTITY_PATTERN = q.QUANTITY_PATTERN
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=q.MAX_QUANTITY_LENGTH)]
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNSLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNSSubdomain = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, min_length=1, max_length=253)]
URI_PATTERN = uris.URI_PATTERN
# A node label value (nvidia.com/gpu.product): alphanumeric at both ends.
GPU_PRODUCT_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$"
# A label key: an optional DNS-subdomain prefix and "/", then a name segment.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
# Neither whitespace nor control characters (the same set in Go's RE2 and pydantic's engine).
NO_SPACE_PATTERN = r"^[^\p{Z}\p{Cc}]+$"
# GPUs one pod (one node) of a replica may hold; no node has more than this.
MAX_GPUS_PER_REPLICA = 64
# Nodes one replica may span (a LeaderWorkerSet group of this many pods): 16
# 8-GPU nodes serve the largest open models with room to spare.
MAX_NODES_PER_REPLICA = 16
# The model URI and runtime.args are repeated on the command line of every rank
# (one tritonserver per GPU under mpirun), so their total length per replica is
# bounded to keep the rendered Deployment far below etcd's object size limit: to
# what one rank may carry (64 arguments of 1024 characters and the longest URI).
MAX_URI_CHARS = 2048
MAX_ARGS = 64
MAX_ARG_CHARS = 1024
MAX_COMMAND_LINE_CHARS = MAX_ARGS * MAX_ARG_CHARS + MAX_URI_CHARS
MAX_ENV_VALUE_CHARS = 32_768
LITERAL = "Passed literally: $(NAME) is not expanded by Kubernetes."


class Backend(StrEnum):
    """Triton backend that executes the model."""

    TENSORRTLLM = "tensorrtllm"
    PYTHON = "python"
    ONNXRUNTIME = "onnxruntime"
    VLLM = "vllm"
    PYTORCH = "pytorch"


# Backends that can split one model across several GPUs of a replica.
MULTI_GPU_BACKENDS = (Backend.TENSORRTLLM, Backend.VLLM)


class SecretReference(ApiModel):
    """A Secret in the ModelDeployment's namespace. Credentials never appear inline."""

    name: DNSSubdomain = Field(description="Name of the Secret.")


MODEL_RULES = (
    Rule(
        cel=f"!self.uri.matches('{uris.USERINFO}')",
        message="model.uri must not carry credentials (user:password@): put them in a "
        "Secret and name it in model.credentials",
        field_path=".uri",
        check=lambda m: not uris.has_userinfo(m.uri),
    ),
    Rule(
        cel=f"!self.uri.startsWith('pvc://') || (self.uri.matches('^{uris.PVC_URI}$') && "
        f"self.uri.matches('^{uris.PVC_CLAIM_LENGTH}$'))",
        message="model.uri pvc://CLAIM[/PATH] needs a PersistentVolumeClaim name: lower-case "
        "letters, digits, '-' and '.', at most 253 characters",
        field_path=".uri",
        check=lambda m: not m.uri.startswith("pvc://") or uris.is_valid_pvc_uri(m.uri),
    ),
    Rule(
        cel=f"!self.uri.startsWith('hf://') || self.uri.matches('^{uris.HF_URI}$')",
        message="model.uri hf:// needs a Hub repository id: hf://ORG/NAME[/PATH]",
        field_path=".uri",
        check=lambda m: not m.uri.startswith("hf://") or uris.is_valid_hf_uri(m.uri),
    ),
    Rule(
        cel="!(self.uri.startsWith('pvc://') || self.uri.startsWith('hf://')) || "
        f"!self.uri.matches('{uris.PARENT_SEGMENT}')",
        message="model.uri: the path must stay inside the repository (no '..' segments)",
        field_path=".uri",
        check=lambda m: not uris.leaves_the_repository(m.uri),
    ),
)


class Model(ApiModel):
    """Where the model repository lives and which backend runs it."""

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(MODEL_RULES)}

    uri: str = Field(
        pattern=URI_PATTERN,
        max_length=MAX_URI_CHARS,
        description=(
            "Triton model repository. s3:// and gs:// are read by Triton directly; "
            "pvc://CLAIM/PATH mounts a PersistentVolumeClaim; hf://ORG/NAME and "
            "http(s):// are downloaded by an init container before Triton starts. "
            "Never user:password@: credentials go in model.credentials. " + LITERAL
        ),
    )
    backend: Backend = Field(
        default=Backend.TENSORRTLLM,
        description="Triton backend that executes the model. Cannot change in place.",
    )
    name: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        max_length=128,
        description=(
            "Model to load from the repository (Triton explicit model control). "
            "When unset Triton loads every model in the repository."
        ),
    )
    credentials: SecretReference | None = Field(
        default=None,
        description=(
            "Secret whose keys become environment variables of the Triton and download "
            "containers (e.g. AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN)."
        ),
    )

    @model_validator(mode="after")
    def _rules(self) -> Model:
        _raise(violations(MODEL_RULES, self))
        return self


GPU_RULES = (
    Rule(
        cel="!has(self.count) || self.count == self.tensorParallelism * self.pipelineParallelism",
        message="gpu.count must equal tensorParallelism × pipelineParallelism (or be left unset)",
        field_path=".count",
        check=lambda g: g.count is None or g.count == g.tensor_parallelism * g.pipeline_parallelism,
    ),
    Rule(
        cel=f"self.tensorParallelism * self.pipelineParallelism <= {MAX_GPUS_PER_REPLICA} * "
        "self.nodesPerReplica",
        message=f"tensorParallelism × pipelineParallelism must not exceed {MAX_GPUS_PER_REPLICA} "
        "per node of a replica (nodesPerReplica)",
        field_path=".tensorParallelism",
        check=lambda g: g.world_size <= MAX_GPUS_PER_REPLICA * g.nodes_per_replica,
    ),
    Rule(
        cel="self.tensorParallelism * self.pipelineParallelism % self.nodesPerReplica == 0",
        message="tensorParallelism × pipelineParallelism must be a multiple of nodesPerReplica: "
        "every node of a replica runs the same number of ranks, one per GPU",
        field_path=".nodesPerReplica",
        check=lambda g: g.world_size % g.nodes_per_replica == 0,
    ),
    Rule(
        cel="!has(self.exclusiveTopology) || self.nodesPerReplica > 1",
        message="gpu.exclusiveTopology places the nodes of a multi-node replica: it needs "
        "nodesPerReplica above 1",
        field_path=".exclusiveTopology",
        check=lambda g: g.exclusive_topology is None or g.nodes_per_replica > 1,
    ),
)


class GPU(ApiModel):
    """GPUs of one replica."""

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(GPU_RULES)}

    count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_GPUS_PER_REPLICA * MAX_NODES_PER_REPLICA,
        description="GPUs per replica. Defaults to tensorParallelism × pipelineParallelism.",
    )
    product: str | None = Field(
        default=None,
        pattern=GPU_PRODUCT_PATTERN,
        max_length=63,
        description=(
            "Required value of the node label nvidia.com/gpu.product set by GPU Feature "
            "Discovery, e.g. NVIDIA-H100-80GB-HBM3. Unset: any GPU node."
        ),
    )
    tensor_parallelism: int = Field(default=1, ge=1, le=64, description="Tensor-parallel ranks.")
    pipeline_parallelism: int = Field(
        default=1, ge=1, le=64, description="Pipeline-parallel stages."
    )
    nodes_per_replica: int = Field(
        default=1,
        ge=1,
        le=MAX_NODES_PER_REPLICA,
        description=(
            "Nodes one replica spans. Above 1 (backend tensorrtllm), each replica is a "
            "LeaderWorkerSet group of this many pods, one per node, each holding "
            "tensorParallelism × pipelineParallelism / nodesPerReplica GPUs; the leader "
            "serves and launches the TensorRT-LLM ranks across the group with MPI. Needs the "
            "LeaderWorkerSet controller (sigs.k8s.io/lws) in the cluster. Cannot change in "
            "place: create a new ModelDeployment beside the old one and move traffic."
        ),
    )

    exclusive_topology: str | None = Field(
        default=None,
        pattern=LABEL_KEY_PATTERN,
        max_length=316,
        description=(
            "With nodesPerReplica above 1: the node label naming a replica's interconnect "
            "domain (an NVLink or InfiniBand block, a node pool). Each replica's nodes then "
            "share one value of it, and no other replica uses that domain "
            "(LeaderWorkerSet's exclusive topology). Unset: any nodes with the GPUs."
        ),
    )

    @property
    def world_size(self) -> int:
        return self.tensor_parallelism * self.pipeline_parallelism

    @property
    def per_replica(self) -> int:
        return self.count if self.count is not None else self.world_size

    @property
    def per_node(self) -> int:
        """GPUs of each pod of a replica (all of them when it spans one node)."""
        return self.per_replica // self.nodes_per_replica

    @property
    def multi_node(self) -> bool:
        return self.nodes_per_replica > 1

    @model_validator(mode="after")
    def _rules(self) -> GPU:
        _raise(violations(GPU_RULES, self))
        return self


class SecretKeySelector(ApiModel):
    name: DNSSubdomain = Field(description="Name of the Secret.")
    # The kubelet mounts keys as file names, so Kubernetes refuses '.', '..' and a
    # leading '..' (IsConfigMapKey); RE2 has no lookahead, hence two branches.
    key: str = Field(
        pattern=r"^([-_a-zA-Z0-9][-._a-zA-Z0-9]*|\.[-_a-zA-Z0-9][-._a-zA-Z0-9]*)$",
        max_length=253,
        description="Key within the Secret (letters, digits, '-', '_' and '.'; not '.' or "
        "'..', and not starting with '..').",
    )


ENV_RULES = (
    Rule(
        cel="has(self.value) != has(self.secretKeyRef)",
        message="env entries take exactly one of value or secretKeyRef",
        check=lambda e: (e.value is None) != (e.secret_key_ref is None),
    ),
)


class EnvVar(ApiModel):
    """An environment variable of the Triton container."""

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(ENV_RULES)}

    name: str = Field(
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=253, description="Variable name."
    )
    value: str | None = Field(
        default=None, max_length=MAX_ENV_VALUE_CHARS, description="Literal value. " + LITERAL
    )
    secret_key_ref: SecretKeySelector | None = Field(
        default=None, description="Read the value from a Secret key."
    )

    @model_validator(mode="after")
    def _rules(self) -> EnvVar:
        _raise(violations(ENV_RULES, self))
        return self


# The CEL of the resource rules below, one helper per predicate of
# turnpike.api.quantity (the Python twins), built from the same patterns.


def _resource_name_cel(key: str) -> str:
    return (
        f"{key}.matches('{q.STANDARD_RESOURCE_PATTERN}') || "
        f"({key}.matches('{q.EXTENDED_RESOURCE_PATTERN}') && "
        f"{key}.matches('{q.EXTENDED_RESOURCE_LENGTHS}') && "
        f"!{key}.contains('kubernetes.io/') && !{key}.startsWith('requests.'))"
    )


def _for_each_key(field: str, condition: str) -> str:
    """CEL: condition holds for every key k of the map field (absent means empty)."""
    return f"!has(self.{field}) || self.{field}.all(k, {condition})"


def _both_quantities(left: str, right: str) -> str:
    return f"isQuantity({left}) && isQuantity({right})"


_REQUEST, _LIMIT = "self.requests[k]", "self.limits[k]"


def _whole_cel(field: str) -> str:
    value = f"self.{field}[k]"
    return _for_each_key(
        field,
        f"!k.contains('/') || !isQuantity({value}) || (quantity({value}).isInteger() && "
        f"quantity({value}).asInteger() <= {q.MAX_DEVICE_COUNT})",
    )


def _hugepages_cel(field: str) -> str:
    value, size = f"self.{field}[k]", f"k.substring({len(q.HUGEPAGES_PREFIX)})"
    page = f"quantity({size})"
    return _for_each_key(
        field,
        f"!k.startsWith('{q.HUGEPAGES_PREFIX}') || (isQuantity({size}) && {page}.isInteger() && "
        f"{page}.asInteger() > 0 && (!isQuantity({value}) || (quantity({value}).isInteger() && "
        f"quantity({value}).asInteger() % {page}.asInteger() == 0)))",
    )


def _names_any_cel(field: str, condition: str) -> str:
    return f"(has(self.{field}) && self.{field}.exists(k, {condition}))"


_HUGEPAGES_KEY = f"k.startsWith('{q.HUGEPAGES_PREFIX}')"
_CPU_OR_MEMORY = "k == 'cpu' || k == 'memory'"
_NOT_OVERCOMMITTABLE = f"(k.contains('/') || {_HUGEPAGES_KEY})"

RESOURCES_RULES = (
    Rule(
        cel=f"({_for_each_key('requests', _resource_name_cel('k'))}) && "
        f"({_for_each_key('limits', _resource_name_cel('k'))})",
        message="runtime.resources names a resource containers cannot request: use cpu, "
        "memory, ephemeral-storage, hugepages-<size> or an extended resource such as "
        "example.com/device (outside kubernetes.io)",
        check=lambda r: all(q.is_container_resource_name(k) for k in [*r.requests, *r.limits]),
    ),
    Rule(
        cel=_for_each_key(
            "requests",
            f"!has(self.limits) || !(k in self.limits) || "
            f"!({_both_quantities(_REQUEST, _LIMIT)}) || "
            f"quantity({_REQUEST}).compareTo(quantity({_LIMIT})) <= 0",
        ),
        message="runtime.resources.requests must not exceed runtime.resources.limits",
        field_path=".requests",
        check=lambda r: q.requests_within_limits(r.requests, r.limits),
    ),
    Rule(
        cel=_for_each_key(
            "requests",
            f"!{_NOT_OVERCOMMITTABLE} || (has(self.limits) && k in self.limits && "
            f"(!({_both_quantities(_REQUEST, _LIMIT)}) || "
            f"quantity({_REQUEST}).compareTo(quantity({_LIMIT})) == 0))",
        ),
        message="runtime.resources: extended resources and hugepages cannot be overcommitted; "
        "set the same value in limits as in requests (or only the limit)",
        field_path=".limits",
        check=lambda r: q.requests_equal_limits(r.requests, r.limits),
    ),
    Rule(
        cel=f"({_whole_cel('requests')}) && ({_whole_cel('limits')})",
        message="runtime.resources: extended resources (example.com/device) are counted in "
        "whole units",
        check=lambda r: (
            q.whole_extended_resources(r.requests) and q.whole_extended_resources(r.limits)
        ),
    ),
    Rule(
        cel=f"({_hugepages_cel('requests')}) && ({_hugepages_cel('limits')})",
        message="runtime.resources: hugepages-<size> needs a whole page size and a whole "
        "multiple of it (hugepages-2Mi: 512Mi)",
        check=lambda r: q.hugepages_in_pages(r.requests) and q.hugepages_in_pages(r.limits),
    ),
    Rule(
        cel=f"!({_names_any_cel('requests', _HUGEPAGES_KEY)} || "
        f"{_names_any_cel('limits', _HUGEPAGES_KEY)}) || "
        f"{_names_any_cel('requests', _CPU_OR_MEMORY)} || "
        f"{_names_any_cel('limits', _CPU_OR_MEMORY)}",
        message="runtime.resources: hugepages need a cpu or memory request or limit too",
        check=lambda r: q.hugepages_with_cpu_or_memory(r.requests, r.limits),
    ),
)


class Resources(ApiModel):
    """CPU and memory of the Triton container (GPUs come from the gpu block)."""

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(RESOURCES_RULES)}

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=8, description="e.g. {cpu: '8', memory: 64Gi}."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=8, description="e.g. {memory: 96Gi}."
    )

    @model_validator(mode="after")
    def _rules(self) -> Resources:
        _raise(violations(RESOURCES_RULES, self))
        return self


RUNTIME_RULES = (
    Rule(
        cel="!has(self.env) || "
        f"self.env.map(e, has(e.value) ? size(e.value) : 0).sum() <= {MAX_ENV_VALUE_CHARS}",
        message=f"runtime.env values must not exceed {MAX_ENV_VALUE_CHARS} characters together; "
        "put large configuration in a Secret or the model repository",
        field_path=".env",
        check=lambda r: sum(len(e.value or "") for e in r.env) <= MAX_ENV_VALUE_CHARS,
    ),
)


class Runtime(ApiModel):
    """The Triton container."""

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(RUNTIME_RULES)}

    image: str = Field(
        default=DEFAULT_RUNTIME_IMAGE,
        pattern=NO_SPACE_PATTERN,
        max_length=512,
        description="Triton server image. The default is pinned and tested.",
    )
    args: list[Annotated[str, Field(max_length=MAX_ARG_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_ARGS,
        description="Extra tritonserver arguments, e.g. --log-verbose=1. " + LITERAL,
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128, description="Environment of the Triton container."
    )
    resources: Resources = Field(default_factory=Resources)
    shm_size: Quantity = Field(
        default="2Gi",
        description=(
            "Size of the memory-backed /dev/shm. The Python backend and multi-rank "
            "TensorRT-LLM exchange tensors through it; the container default of 64Mi fails."
        ),
    )

    @model_validator(mode="after")
    def _rules(self) -> Runtime:
        _raise(violations(RUNTIME_RULES, self))
        return self


class MetricsSource(StrEnum):
    PODS = "pods"
    PROMETHEUS = "prometheus"


class AutoscalingMetric(StrEnum):
    QUEUE_DEPTH = "queueDepth"
    QUEUE_TIME = "queueTime"


AUTOSCALING_RULES = (
    Rule(
        cel="self.source != 'prometheus' || has(self.prometheusUrl)",
        message="autoscaling.prometheusUrl is required when source is prometheus",
        field_path=".prometheusUrl",
        check=lambda a: a.source != MetricsSource.PROMETHEUS or a.prometheus_url is not None,
    ),
    Rule(
        cel=f"!has(self.prometheusUrl) || !self.prometheusUrl.matches('{uris.USERINFO}')",
        message="autoscaling.prometheusUrl must not carry credentials (user:password@): "
        "everyone who can read the ModelDeployment could read them",
        field_path=".prometheusUrl",
        check=lambda a: a.prometheus_url is None or not uris.has_userinfo(a.prometheus_url),
    ),
)


class Autoscaling(ApiModel):
    """Queue-driven autoscaling read from Triton's own metrics."""

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(AUTOSCALING_RULES)}

    enabled: bool = Field(default=False, description="Let the operator choose replicas.")
    metric: AutoscalingMetric = Field(
        default=AutoscalingMetric.QUEUE_DEPTH,
        description="queueDepth: pending requests per replica; queueTime: mean queue wait (ms).",
    )
    target: float = Field(
        default=4.0,
        gt=0,
        le=1_000_000,
        description="Target value of the metric per replica.",
    )
    tolerance: float = Field(
        default=0.1, ge=0, lt=1, description="No change while within ±tolerance of target."
    )
    scrape_interval_seconds: int = Field(
        default=2, ge=1, le=60, description="How often Triton's metrics are read."
    )
    panic_window_seconds: int = Field(
        default=6, ge=1, le=600, description="Short window that reacts to bursts."
    )
    stabilization_window_seconds: int = Field(
        default=120, ge=0, le=3600, description="Scale down only after this long below target."
    )
    max_scale_up_rate: float = Field(
        default=2.0, gt=1, le=100, description="At most this factor more replicas per step."
    )
    max_scale_down_step: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="At most this many replicas removed per scaleDownPeriodSeconds.",
    )
    scale_down_period_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description=(
            "Period of the scale-down limit: removing replicas one scrape after another "
            "overshoots while the queue reads empty (0: no time limit)."
        ),
    )
    scale_to_zero_idle_seconds: int = Field(
        default=300,
        ge=30,
        le=86_400,
        description=(
            "With minReplicas 0: scale to zero after this long with nothing queued, executing "
            "or held at a gateway. A gateway must be reporting: without one nothing could "
            "wake the deployment again."
        ),
    )
    source: MetricsSource = Field(
        default=MetricsSource.PODS,
        description=(
            "pods: scrape each ready pod's Triton metrics port directly (no extra moving "
            "parts, lowest delay); prometheus: query an existing Prometheus."
        ),
    )
    prometheus_url: str | None = Field(
        default=None,
        pattern=uris.HTTP_URL_PATTERN,
        max_length=2048,
        description="Base URL of the Prometheus HTTP API, required when source is prometheus.",
    )

    @model_validator(mode="after")
    def _rules(self) -> Autoscaling:
        _raise(violations(AUTOSCALING_RULES, self))
        return self


class SLOLatency(StrEnum):
    QUEUE_WAIT = "queueWait"
    REQUEST_LATENCY = "requestLatency"


class SLO(ApiModel):
    """A latency objective the deployment is held to, and measured against.

    "objectivePercent of requests finish within thresholdMilliseconds over the
    last windowMinutes". Triton exports cumulative latency counters only, so
    without the gateway the fraction within the threshold is estimated from
    each pod's mean per scrape interval; status.slo.method and
    status.slo.attainmentLowerBoundPercent say how (see docs/slo.md).
    """

    latency: SLOLatency = Field(
        default=SLOLatency.REQUEST_LATENCY,
        description=(
            "Which latency the objective is on. requestLatency: Triton's whole request "
            "(queue, compute, overhead), network excluded; queueWait: the time a request "
            "waits in Triton's scheduler queue."
        ),
    )
    threshold_milliseconds: float = Field(
        gt=0,
        le=3_600_000,
        description="A request within this latency (ms) counts as good.",
    )
    objective_percent: float = Field(
        default=99.0,
        gt=0,
        lt=100,
        description="Share of requests that must be good over the window, e.g. 99 or 99.9.",
    )
    window_minutes: int = Field(
        default=1440,
        ge=5,
        le=43_200,
        description="Compliance window, in minutes (default one day, at most 30 days).",
    )


MD_SPEC_RULES = (
    Rule(
        cel="!has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
        message="minReplicas must not exceed maxReplicas",
        field_path=".minReplicas",
        check=lambda s: s.max_replicas is None or s.min_replicas <= s.max_replicas,
    ),
    Rule(
        cel="self.gpu.tensorParallelism * self.gpu.pipelineParallelism == 1 || "
        "self.model.backend in ['tensorrtllm', 'vllm']",
        message="tensor or pipeline parallelism above 1 needs backend tensorrtllm or vllm",
        field_path=".gpu",
        check=lambda s: s.gpu.world_size == 1 or s.model.backend in MULTI_GPU_BACKENDS,
    ),
    Rule(
        cel="self.minReplicas > 0 || (has(self.autoscaling) && self.autoscaling.enabled)",
        message="minReplicas 0 needs autoscaling.enabled: the autoscaler is what wakes the "
        "deployment when the gateway holds requests for it",
        field_path=".minReplicas",
        check=lambda s: s.min_replicas > 0 or s.autoscaling.enabled,
    ),
    Rule(
        cel="!has(self.autoscaling) || !self.autoscaling.enabled || has(self.maxReplicas)",
        message="maxReplicas is required when autoscaling is enabled",
        field_path=".maxReplicas",
        check=lambda s: not s.autoscaling.enabled or s.max_replicas is not None,
    ),
    Rule(
        cel="((has(self.runtime.args) ? self.runtime.args.map(a, size(a)).sum() : 0) + "
        "size(self.model.uri)) * self.gpu.tensorParallelism * self.gpu.pipelineParallelism "
        f"<= {MAX_COMMAND_LINE_CHARS}",
        message="runtime.args and model.uri are repeated for each of the tensorParallelism × "
        f"pipelineParallelism ranks: together they must not exceed {MAX_COMMAND_LINE_CHARS} "
        "characters per replica; shorten runtime.args",
        field_path=".runtime.args",
        check=lambda s: command_line_chars(s) <= MAX_COMMAND_LINE_CHARS,
    ),
    Rule(
        cel="self.gpu.nodesPerReplica == 1 || self.model.backend == 'tensorrtllm'",
        message="gpu.nodesPerReplica above 1 needs backend tensorrtllm (its ranks are launched "
        "with MPI across the nodes of a replica)",
        field_path=".gpu.nodesPerReplica",
        check=lambda s: s.gpu.nodes_per_replica == 1 or s.model.backend == Backend.TENSORRTLLM,
    ),
    Rule(
        cel="self.gpu.nodesPerReplica == oldSelf.gpu.nodesPerReplica",
        message="gpu.nodesPerReplica cannot change in place (a replica that spans nodes is a "
        "LeaderWorkerSet group, one on a single node a Deployment's pod); create a new "
        "ModelDeployment beside this one and move traffic to it",
        field_path=".gpu.nodesPerReplica",
    ),
    Rule(
        cel="self.model.backend == oldSelf.model.backend",
        message="model.backend cannot change in place; create a new ModelDeployment",
        field_path=".model.backend",
    ),
)


def command_line_chars(spec: ModelDeploymentSpec) -> int:
    """Characters the user contributes to a replica's command line (see MAX_COMMAND_LINE_CHARS)."""
    per_rank = sum(len(a) for a in spec.runtime.args) + len(spec.model.uri)
    return per_rank * spec.gpu.world_size


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment."""

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(MD_SPEC_RULES)}

    model: Model
    gpu: GPU = Field(default_factory=GPU)
    runtime: Runtime = Field(default_factory=Runtime)
    replicas: int = Field(
        default=1,
        ge=0,
        le=10_000,
        description=(
            "Replicas while autoscaling is off; `kubectl scale` writes it through the scale "
            "subresource. With autoscaling on, the autoscaler chooses within "
            "[minReplicas, maxReplicas] and this field is not used."
        ),
    )
    min_replicas: int = Field(
        default=1,
        ge=0,
        le=10_000,
        description=(
            "Fewest replicas the autoscaler keeps. 0 lets an idle deployment scale to zero "
            "(needs autoscaling and the Turnpike gateway in front, which holds requests "
            "while a replica wakes; see autoscaling.scaleToZeroIdleSeconds)."
        ),
    )
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Most replicas the autoscaler may ask for (required with autoscaling).",
    )
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    tier: DNSLabel | None = Field(
        default=None,
        description="CapacityTier whose GPUs this deployment uses. Unset: the default tier.",
    )
    slo: SLO | None = Field(
        default=None,
        description=(
            "Latency objective: measured into status.slo and condition SLOMet, and served "
            "by the autoscaler (it scales up on the SLO's latency too)."
        ),
    )

    @model_validator(mode="after")
    def _rules(self) -> ModelDeploymentSpec:
        _raise(violations(MD_SPEC_RULES, self))
        return self


class ObjectMeta(ApiModel):
    """The parts of metadata the operator reads."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ModelDeployment(ApiModel):
    model_config = ApiModel.model_config | {"extra": "ignore"}

    api_version: Literal["turnpike.dev/v1alpha1"] = "turnpike.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta
    spec: ModelDeploymentSpec

    @classmethod
    def from_k8s(cls, body: dict[str, Any]) -> ModelDeployment:
        return cls.model_validate(body)


def _raise(messages: list[str]) -> None:
    if messages:
        raise ValueError("; ".join(messages))
