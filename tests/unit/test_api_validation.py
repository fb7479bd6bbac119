"""Validation of ModelDeployment specs through pydantic.

The Python twins of the CEL rules decide what the operator accepts for objects
stored before a CRD change, so they must refuse exactly what admission refuses.
"""

from __future__ import annotations

import re
import types
from enum import Enum
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from turnpike.api import modeldeployment as md
from turnpike.api.modeldeployment import GPU, EnvVar, ModelDeploymentSpec, Runtime
from turnpike.api.rules import Rule, rules_schema

URI = "s3://bucket/models"


def spec(**fields: Any) -> ModelDeploymentSpec:
    fields.setdefault("model", {"uri": URI})
    return ModelDeploymentSpec.model_validate(fields)


def refused(match: str, **fields: Any) -> None:
    with pytest.raises(ValidationError, match=match):
        spec(**fields)


def test_minimal_spec_gets_defaults() -> None:
    s = spec()
    assert s.model.backend is md.Backend.TENSORRTLLM
    assert (s.gpu.per_replica, s.min_replicas, s.replicas, s.max_replicas) == (1, 1, 1, None)
    assert s.runtime.shm_size == "2Gi"
    assert not s.autoscaling.enabled
    assert s.to_k8s()["gpu"] == {"tensorParallelism": 1, "pipelineParallelism": 1}


def test_snake_case_is_accepted_too() -> None:
    assert spec(min_replicas=2).min_replicas == spec(minReplicas=2).min_replicas == 2


def test_min_must_not_exceed_max() -> None:
    assert spec(minReplicas=2, maxReplicas=2).max_replicas == 2
    assert spec(minReplicas=5).max_replicas is None
    refused("minReplicas must not exceed maxReplicas", minReplicas=3, maxReplicas=2)


def test_autoscaling_needs_max_replicas() -> None:
    refused("maxReplicas is required", autoscaling={"enabled": True})
    assert spec(autoscaling={"enabled": True}, maxReplicas=4).autoscaling.enabled


@pytest.mark.parametrize(
    ("gpu", "ok"),
    [
        ({}, True),
        ({"count": 4, "tensorParallelism": 2, "pipelineParallelism": 2}, True),
        ({"tensorParallelism": 4}, True),
        ({"count": 3, "tensorParallelism": 2}, False),
        ({"count": 2}, False),
        ({"count": 0}, False),
        ({"count": 65}, False),
        ({"tensorParallelism": 0}, False),
    ],
)
def test_gpu_count_matches_parallelism(gpu: dict[str, Any], ok: bool) -> None:
    if ok:
        assert GPU.model_validate(gpu).per_replica >= 1
    else:
        with pytest.raises(ValidationError):
            GPU.model_validate(gpu)


@pytest.mark.parametrize("backend", ["python", "onnxruntime", "pytorch"])
def test_model_parallelism_needs_a_multi_gpu_backend(backend: str) -> None:
    model = {"uri": URI, "backend": backend}
    assert spec(model=model).model.backend == backend
    for gpu in ({"tensorParallelism": 2}, {"pipelineParallelism": 2}):
        refused("needs backend tensorrtllm or vllm", model=model, gpu=gpu)


@pytest.mark.parametrize("backend", ["tensorrtllm", "vllm"])
def test_multi_gpu_backends_accept_parallelism(backend: str) -> None:
    s = spec(model={"uri": URI, "backend": backend}, gpu={"tensorParallelism": 2})
    assert s.gpu.per_replica == 2


def test_unknown_backend_is_refused() -> None:
    refused("backend", model={"uri": URI, "backend": "tensorflow"})


@pytest.mark.parametrize(
    "env",
    [
        {"name": "A", "value": "1"},
        {"name": "A", "value": ""},
        {"name": "A", "secretKeyRef": {"name": "creds", "key": "token"}},
    ],
)
def test_env_takes_value_or_secret(env: dict[str, Any]) -> None:
    assert EnvVar.model_validate(env).name == "A"


@pytest.mark.parametrize(
    "env",
    [
        {"name": "A"},
        {"name": "A", "value": "1", "secretKeyRef": {"name": "creds", "key": "token"}},
    ],
)
def test_env_refuses_both_or_neither(env: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="exactly one of value or secretKeyRef"):
        EnvVar.model_validate(env)


@pytest.mark.parametrize(
    "env",
    [
        {"name": "1A", "value": "x"},
        {"name": "A", "secretKeyRef": {"name": "Creds", "key": "k"}},
        {"name": "A", "secretKeyRef": {"name": "creds", "key": ""}},
    ],
)
def test_env_names_are_checked(env: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EnvVar.model_validate(env)


def test_prometheus_source_needs_a_url() -> None:
    refused("prometheusUrl is required", autoscaling={"source": "prometheus"})


def test_prometheus_url_must_be_http() -> None:
    s = spec(autoscaling={"source": "prometheus", "prometheusUrl": "http://prometheus:9090"})
    assert s.autoscaling.prometheus_url == "http://prometheus:9090"
    refused("prometheus", autoscaling={"source": "prometheus", "prometheusUrl": "prometheus:9090"})


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/path/to/repo",
        "gs://bucket/repo",
        "pvc://models/llama",
        "hf://meta-llama/Llama-3.1-8B-Instruct",
        "http://files.local/repo.tar.gz",
        "https://example.com/repo.tar.gz",
    ],
)
def test_uri_schemes_accepted(uri: str) -> None:
    assert spec(model={"uri": uri}).model.uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://host/repo",
        "/models/repo",
        "models/repo",
        "file:///models",
        "s3:/bucket",
        "s3://",
        "S3://bucket",
        "s3://bucket/with space",
        "",
    ],
)
def test_uri_schemes_refused(uri: str) -> None:
    refused("uri", model={"uri": uri})


@pytest.mark.parametrize(
    "fields",
    [
        {"replica": 2},
        {"gpu": {"cnt": 2}},
        {"model": {"uri": URI, "repo": "x"}},
        {"runtime": {"shm": "1Gi"}},
        {"autoscaling": {"targt": 3}},
    ],
)
def test_fields_of_a_newer_crd_do_not_stop_the_operator(fields: dict[str, Any]) -> None:
    """The API server refuses unknown fields at admission (tests/integration); the
    operator reading a field it does not know yet (CRDs upgraded first) goes on."""
    assert spec(**fields).model.uri == URI


@pytest.mark.parametrize("quantity", ["2Gi", "512Mi", "500m", "1", "1.5", ".5", "1e3", "+1k"])
def test_quantities_accepted(quantity: str) -> None:
    runtime = Runtime.model_validate(
        {"shmSize": quantity, "resources": {"requests": {"cpu": quantity}}}
    )
    assert runtime.shm_size == runtime.resources.requests["cpu"] == quantity


@pytest.mark.parametrize("quantity", ["2GB", "2 Gi", "two", "", "1Gi ", "Gi", "1.2.3"])
def test_quantities_refused(quantity: str) -> None:
    with pytest.raises(ValidationError):
        Runtime.model_validate({"shmSize": quantity})
    with pytest.raises(ValidationError):
        Runtime.model_validate({"resources": {"limits": {"memory": quantity}}})


def test_collections_are_bounded() -> None:
    too_many = {f"r{i}": "1" for i in range(9)}
    with pytest.raises(ValidationError):
        Runtime.model_validate({"resources": {"requests": too_many}})
    with pytest.raises(ValidationError):
        Runtime.model_validate({"args": ["-v"] * 65})


def test_tier_is_a_dns_label() -> None:
    assert spec(tier="a100-pool").tier == "a100-pool"
    refused("tier", tier="A100_pool")


# --- The CEL text and its Python twin talk about the same fields --------------

_RULE_SETS = {
    name: value
    for name, value in vars(md).items()
    if name.endswith("_RULES") and isinstance(value, tuple)
}
_MODELS = [v for v in vars(md).values() if isinstance(v, type) and issubclass(v, BaseModel)]
# snake_case field name → camelCase alias, over every model of the API.
_ALIASES = {
    name: info.alias or name for model in _MODELS for name, info in model.model_fields.items()
}
_PROPERTIES = {
    name: prop
    for model in _MODELS
    for name, prop in vars(model).items()
    if isinstance(prop, property)
}
_ENUM_VALUES = {
    member.value
    for v in vars(md).values()
    if isinstance(v, type) and issubclass(v, Enum)
    for member in v
}


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # comprehensions, nested lambdas
            names |= _names(const)
    return names


def _python_fields(rule: Rule) -> set[str]:
    """camelCase fields the Python check reads, following properties like world_size."""
    assert rule.check is not None
    pending, seen, fields = _names(rule.check.__code__), set[str](), set[str]()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in _ALIASES:
            fields.add(_ALIASES[name])
        elif name in _PROPERTIES and (getter := _PROPERTIES[name].fget) is not None:
            pending |= _names(getter.__code__)
    return fields


def _cel_fields(rule: Rule) -> set[str]:
    return {
        field
        for chain in re.findall(r"\b(?:self|oldSelf)((?:\.\w+)+)", rule.cel)
        for field in chain.split(".")[1:]
    }


_CHECKED = [
    pytest.param(rule, id=f"{name}[{i}]")
    for name, rules in _RULE_SETS.items()
    for i, rule in enumerate(rules)
    if rule.check is not None
]


def _owner(rules: tuple[Rule, ...]) -> type[BaseModel]:
    (model,) = [
        m for m in _MODELS if m.model_config.get("json_schema_extra") == rules_schema(rules)
    ]
    return model


@pytest.mark.parametrize(
    "name",
    [n for n in sorted(_RULE_SETS)],
)
def test_models_enforce_their_rules_in_python(name: str) -> None:
    # A rule only in the CRD lets objects stored before the CRD change through.
    model = _owner(_RULE_SETS[name])
    assert model.__pydantic_decorators__.model_validators, f"{model.__name__} skips {name}"


def test_rule_sets_are_found() -> None:
    assert set(_RULE_SETS) >= {"GPU_RULES", "ENV_RULES", "AUTOSCALING_RULES", "MD_SPEC_RULES"}
    assert len(_CHECKED) >= 6


@pytest.mark.parametrize("rule", _CHECKED)
def test_cel_and_python_read_the_same_fields(rule: Rule) -> None:
    assert _cel_fields(rule) == _python_fields(rule), rule.cel


@pytest.mark.parametrize("rule", _CHECKED)
def test_cel_string_literals_are_enum_values(rule: Rule) -> None:
    literals = set(re.findall(r"'([^']*)'", rule.cel))
    assert literals <= _ENUM_VALUES, rule.cel


def test_multi_gpu_backends_match_the_cel_list() -> None:
    (rule,) = [r for r in md.MD_SPEC_RULES if "tensorParallelism" in r.cel]
    assert set(re.findall(r"'([^']*)'", rule.cel)) == {b.value for b in md.MULTI_GPU_BACKENDS}
