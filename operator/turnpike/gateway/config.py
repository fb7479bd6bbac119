"""The gateway's configuration file: tiers, tenants and per-deployment limits.

Unlike the CRDs, nothing prunes this file before the gateway reads it, so
unknown keys are refused: a misspelt ``queueLimit`` silently falling back to
the default would only show up as a surprise under load.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel


class ConfigError(ValueError):
    """The configuration file cannot be used; the message says where."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Tier(_Model):
    """A class of service on a shared deployment."""

    priority: int = Field(
        default=0, description="Higher is more important: lower priorities are shed first."
    )
    weight: float = Field(
        default=1.0, gt=0, le=1e6, description="Share of a contended deployment, relative."
    )
    reserved: bool = Field(
        default=False,
        description="Never shed while the tier uses less than its share of the deployment.",
    )


class Tenant(_Model):
    """Who sends a request; mapped to a tier."""

    tier: str
    api_keys: tuple[str, ...] = Field(
        default=(), repr=False, description="Plain API keys (prefer apiKeySha256)."
    )
    api_key_sha256: tuple[str, ...] = Field(
        default=(), repr=False, description="Hex SHA-256 digests of API keys."
    )
    header_values: tuple[str, ...] = Field(
        default=(),
        description="Values of tenantHeader that name this tenant (trusted, not a secret).",
    )

    def key_digests(self) -> frozenset[str]:
        plain = {hashlib.sha256(key.encode()).hexdigest() for key in self.api_keys}
        return frozenset(plain | {d.lower() for d in self.api_key_sha256})


class Dialect(StrEnum):
    """How OpenAI sampling options reach a Triton model's generate endpoint.

    Triton refuses inputs a model does not declare, so the options must be
    spelt the way the model's backend expects them.
    """

    # Only text_input (and stream) as inputs; options as request parameters,
    # which Triton hands to the model and never refuses.
    PLAIN = "plain"
    # TensorRT-LLM ensembles: max_tokens, temperature, top_p, stop_words inputs.
    TRTLLM = "trtllm"
    # vLLM backend: a sampling_parameters JSON string input.
    VLLM = "vllm"


class ChatTemplate(StrEnum):
    """How chat messages become one prompt when the model does not template itself."""

    CHATML = "chatml"
    PLAIN = "plain"


class OpenAIOptions(_Model):
    dialect: Dialect = Dialect.PLAIN
    chat_template: ChatTemplate = ChatTemplate.CHATML
    max_tokens_default: int = Field(default=256, ge=1, le=1_000_000)
    cumulative_stream: bool = Field(
        default=False,
        description="The model streams the whole text so far in each response, not deltas.",
    )


class DeploymentLimits(_Model):
    """Per-deployment bounds; every field has a default so a model needs no entry."""

    triton_model: str | None = Field(
        default=None, description="Model name inside Triton (default: the request's name)."
    )
    slo_threshold_milliseconds: float | None = Field(default=None, gt=0, le=3_600_000)
    max_in_flight_per_replica: int = Field(default=8, ge=1, le=100_000)
    queue_limit: int = Field(default=256, ge=0, le=1_000_000)
    queue_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    hold_limit: int = Field(default=100, ge=0, le=1_000_000)
    hold_timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    retry_after_seconds: int = Field(default=1, ge=1, le=3600)
    max_replicas: int | None = Field(
        default=None,
        ge=0,
        description="Replicas the deployment may grow to; unset: the fleet cannot grow.",
    )
    openai: OpenAIOptions = OpenAIOptions()


DEFAULT_TIER = "default"


class GatewayConfig(_Model):
    tiers: Mapping[str, Tier] = Field(default_factory=lambda: {DEFAULT_TIER: Tier()})
    tenants: Mapping[str, Tenant] = Field(default_factory=dict)
    tenant_header: str | None = Field(
        default=None, description="Header whose value names the tenant (set by a trusted proxy)."
    )
    default_tier: str | None = Field(
        default=DEFAULT_TIER,
        description="Tier of requests without credentials; null: such requests get 401.",
    )
    defaults: DeploymentLimits = DeploymentLimits()
    deployments: Mapping[str, DeploymentLimits] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=2**31)
    upstream_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    upstream_read_timeout_seconds: float = Field(default=600.0, gt=0, le=86_400)
    upstream_connections: int = Field(default=1024, ge=1, le=100_000)

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        if not self.tiers:
            raise ValueError("tiers: at least one tier is needed")
        if self.default_tier is not None and self.default_tier not in self.tiers:
            raise ValueError(f"defaultTier: no tier named {self.default_tier!r}")
        seen: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            if tenant.tier not in self.tiers:
                raise ValueError(f"tenants.{name}.tier: no tier named {tenant.tier!r}")
            for digest in tenant.key_digests():
                if digest in seen:
                    # Name the tenants, never the key.
                    raise ValueError(f"tenants.{name}: an API key also belongs to {seen[digest]}")
                seen[digest] = name
            if tenant.header_values and self.tenant_header is None:
                raise ValueError(f"tenants.{name}.headerValues needs tenantHeader")
        return self

    def limits(self, deployment: str) -> DeploymentLimits:
        """Limits of ``deployment`` (``NAMESPACE/NAME`` when discovered, which an entry
        may spell in full or by NAME alone)."""
        found = self.deployments.get(deployment)
        if found is None and "/" in deployment:
            found = self.deployments.get(deployment.partition("/")[2])
        return found if found is not None else self.defaults

    def slo_thresholds_seconds(self) -> tuple[float, ...]:
        found = {
            limits.slo_threshold_milliseconds / 1000.0
            for limits in (self.defaults, *self.deployments.values())
            if limits.slo_threshold_milliseconds is not None
        }
        return tuple(sorted(found))


def parse_config(data: Any) -> GatewayConfig:
    """Validate an already-loaded document (``None`` is the empty file)."""
    try:
        return GatewayConfig.model_validate(data or {})
    except ValidationError as exc:
        # pydantic echoes the offending input; for a tenant that may be an API key.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(problems) from None


def load_config(path: Path | None) -> GatewayConfig:
    if path is None:
        return GatewayConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML: {exc}") from None
    return parse_config(data)
