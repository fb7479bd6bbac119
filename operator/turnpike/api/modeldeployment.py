"""ModelDeployment: one model served by a fleet of Triton pods on GPUs."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from turnpike.api.base import ApiModel
from turnpike.api.constants import DEFAULT_RUNTIME_IMAGE
from turnpike.api.rules import Rule, rules_schema, violations

# Kubernetes resource.Quantity, e.g. "1Gi", "500m", "2".
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNSLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNSSubdomain = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, min_length=1, max_length=253)]
URI_PATTERN = r"^(s3|gs|pvc|hf|https?)://[^\s]+$"


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


class Model(ApiModel):
    """Where the model repository lives and which backend runs it."""

    uri: str = Field(
        pattern=URI_PATTERN,
        max_length=2048,
        description=(
            "Triton model repository. s3:// and gs:// are read by Triton directly; "
            "pvc://CLAIM/PATH mounts a PersistentVolumeClaim; hf://ORG/NAME and "
            "http(s):// are downloaded by an init container before Triton starts."
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


GPU_RULES = (
    Rule(
        cel="!has(self.count) || self.count == self.tensorParallelism * self.pipelineParallelism",
        message="gpu.count must equal tensorParallelism × pipelineParallelism (or be left unset)",
        field_path=".count",
        check=lambda g: g.count is None or g.count == g.tensor_parallelism * g.pipeline_parallelism,
    ),
)


class GPU(ApiModel):
    """GPUs of one replica."""

    model_config = ApiModel.model_config | {"json_schema_extra": rules_schema(GPU_RULES)}

    count: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="GPUs per replica. Defaults to tensorParallelism × pipelineParallelism.",
    )
    product: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
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

    @property
    def world_size(self) -> int:
        return self.tensor_parallelism * self.pipeline_parallelism

    @property
    def per_replica(self) -> int:
        return self.count if self.count is not None else self.world_size

    @model_validator(mode="after")
    def _rules(self) -> GPU:
        _raise(violations(GPU_RULES, self))
        return self


class SecretKeySelector(ApiModel):
    name: DNSSubdomain = Field(description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret.")


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
    value: str | None = Field(default=None, description="Literal value.")
    secret_key_ref: SecretKeySelector | None = Field(
        default=None, description="Read the value from a Secret key."
    )

    @model_validator(mode="after")
    def _rules(self) -> EnvVar:
        _raise(violations(ENV_RULES, self))
        return self


class Resources(ApiModel):
    """CPU and memory of the Triton container (GPUs come from the gpu block)."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, max_length=8, description="e.g. {cpu: '8', memory: 64Gi}."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, max_length=8, description="e.g. {memory: 96Gi}."
    )


class Runtime(ApiModel):
    """The Triton container."""

    image: str = Field(
        default=DEFAULT_RUNTIME_IMAGE,
        min_length=1,
        max_length=512,
        description="Triton server image. The default is pinned and tested.",
    )
    args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra tritonserver arguments, e.g. --log-verbose=1.",
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
    source: MetricsSource = Field(
        default=MetricsSource.PODS,
        description=(
            "pods: scrape each ready pod's Triton metrics port directly (no extra moving "
            "parts, lowest delay); prometheus: query an existing Prometheus."
        ),
    )
    prometheus_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="Base URL of the Prometheus HTTP API, required when source is prometheus.",
    )

    @model_validator(mode="after")
    def _rules(self) -> Autoscaling:
        _raise(violations(AUTOSCALING_RULES, self))
        return self


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
        cel="!has(self.autoscaling) || !self.autoscaling.enabled || has(self.maxReplicas)",
        message="maxReplicas is required when autoscaling is enabled",
        field_path=".maxReplicas",
        check=lambda s: not s.autoscaling.enabled or s.max_replicas is not None,
    ),
    Rule(
        cel="self.model.backend == oldSelf.model.backend",
        message="model.backend cannot change in place; create a new ModelDeployment",
        field_path=".model.backend",
    ),
)


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
        default=1, ge=1, le=10_000, description="Fewest replicas the autoscaler keeps."
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
