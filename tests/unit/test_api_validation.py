"""Validation of ModelDeployment specs through pydantic.

The Python twins of the CEL rules decide what the operator accepts for objects
stored before a CRD change, so they must refuse exactly what admission refuses.
"""

from __future__ import annotations

import re
import types
import unicodedata
from enum import Enum
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from turnpike.api import modeldeployment as md
from turnpike.api import quantity, uris
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
    assert s.to_k8s()["gpu"] == {
        "tensorParallelism": 1,
        "pipelineParallelism": 1,
        "nodesPerReplica": 1,
    }


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
# Module-level helpers a check may call with a model (md.command_line_chars).
_HELPERS = {
    name: value
    for name, value in vars(md).items()
    if isinstance(value, types.FunctionType) and value.__module__ == md.__name__
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
        elif name in _HELPERS:
            pending |= _names(_HELPERS[name].__code__)
    return fields


def _cel_fields(rule: Rule) -> set[str]:
    """Fields a CEL rule reads: chains from self/oldSelf and from the variables of
    macros over them (``self.env.map(e, e.value)``), without method names."""
    roots = {"self", "oldSelf", *re.findall(r"\.(?:all|exists|map|filter)\((\w+),", rule.cel)}
    fields = set()
    for match in re.finditer(r"\b(\w+)((?:\.\w+)+)(\(?)", rule.cel):
        if match.group(1) not in roots:
            continue
        chain = match.group(2).split(".")[1:]
        fields |= set(chain[:-1] if match.group(3) else chain)
    return fields


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


# Regular expressions and prefixes the rules may spell, each a constant of the
# modules the Python twins use, so CEL and Python cannot drift apart.
_PATTERNS = {
    uris.USERINFO,
    f"^{uris.PVC_URI}$",
    f"^{uris.PVC_CLAIM_LENGTH}$",
    f"^{uris.HF_URI}$",
    uris.PARENT_SEGMENT,
    quantity.STANDARD_RESOURCE_PATTERN,
    quantity.EXTENDED_RESOURCE_PATTERN,
    quantity.EXTENDED_RESOURCE_LENGTHS,
}
_PREFIXES = {
    "pvc://",
    "hf://",
    "/",
    quantity.HUGEPAGES_PREFIX,
    "requests.",
    "kubernetes.io/",
    "cpu",
    "memory",
}


@pytest.mark.parametrize("rule", _CHECKED)
def test_cel_string_literals_are_enum_values(rule: Rule) -> None:
    literals = set(re.findall(r"'([^']*)'", rule.cel))
    assert literals <= _ENUM_VALUES | _PATTERNS | _PREFIXES, rule.cel


@pytest.mark.parametrize("rule", _CHECKED)
def test_cel_regexes_are_the_python_ones(rule: Rule) -> None:
    # A regex typed into the CEL by hand would differ from the twin's sooner or
    # later; no backslash either (CEL string literals refuse "\.").
    assert set(re.findall(r"matches\('([^']*)'\)", rule.cel)) <= _PATTERNS, rule.cel
    assert "\\" not in rule.cel


def test_multi_gpu_backends_match_the_cel_list() -> None:
    (rule,) = [r for r in md.MD_SPEC_RULES if "backend in" in r.cel]
    assert set(re.findall(r"'([^']*)'", rule.cel)) == {b.value for b in md.MULTI_GPU_BACKENDS}


# --- Issue 11: everything the renderer would refuse is refused at admission -------


def _model_error(uri: str) -> str:
    with pytest.raises(ValidationError) as caught:
        spec(model={"uri": uri})
    return str(caught.value)


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://Models/llama",  # upper-case claim
        "pvc://-bad/x",
        "pvc://" + "c" * 254 + "/x",  # claim longer than 253
        "hf://org",  # no model name
        "hf://org/na%me",
        "pvc://store/../etc",
        "pvc://store/a/../../b",
        "hf://org/name/../x",
        "hf://org/name/..",
    ],
)
def test_uris_the_renderer_cannot_use_are_refused(uri: str) -> None:
    # Defect 1: these passed the CRD pattern and parse, then crashed the render.
    assert "model.uri" in _model_error(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://model-store",
        "pvc://model-store/./llama",
        "pvc://a.b-c/x/..y",
        "hf://nvidia/llama-3.1_8b/triton",
        "http://example.com/a/../b.tar",
    ],
)
def test_usable_uris_are_still_accepted(uri: str) -> None:
    assert spec(model={"uri": uri}).model.uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "s3://KEY:TOPSECRET@bucket/path",
        "gs://user:TOPSECRET@bucket/repo",
        "https://user:TOPSECRET@host/m.tar",
        "http://TOPSECRET@host/m.tar",
        "s3://https://KEY:TOPSECRET@minio:9000/bucket",
    ],
)
def test_inline_credentials_are_refused_and_not_echoed(uri: str) -> None:
    # Defect 2: the refusal names the field, says what to do instead and does not
    # repeat the credentials (pydantic's input_value is the spec's dict repr, so
    # check the error list, which is what the operator reports).
    with pytest.raises(ValidationError) as caught:
        spec(model={"uri": uri})
    messages = " ".join(e["msg"] for e in caught.value.errors())
    assert "model.uri" in messages and "model.credentials" in messages
    assert "TOPSECRET" not in messages


def test_a_url_with_an_at_sign_in_the_path_is_not_userinfo() -> None:
    assert spec(model={"uri": "https://host/models/llama@v2.tar"}).model.uri.endswith("@v2.tar")


def test_prometheus_url_with_credentials_is_refused() -> None:
    refused(
        "prometheusUrl must not carry credentials",
        maxReplicas=2,
        autoscaling={
            "enabled": True,
            "source": "prometheus",
            "prometheusUrl": "http://admin:pw@prometheus:9090",
        },
    )


def test_gpus_per_replica_are_capped() -> None:
    # Defect 7: tp 64 × pp 64 rendered nvidia.com/gpu: 4096 and a 1.4 MB Deployment.
    refused("must not exceed 64", gpu={"tensorParallelism": 64, "pipelineParallelism": 64})
    refused("must not exceed 64", gpu={"tensorParallelism": 16, "pipelineParallelism": 8})
    assert spec(gpu={"tensorParallelism": 8, "pipelineParallelism": 8}).gpu.per_replica == 64


def test_arguments_repeated_on_every_rank_are_bounded() -> None:
    # Defect 7: 64 long args on every one of 64 ranks built a 266 MB object.
    args = ["-" * 1024] * 64
    assert spec(runtime={"args": args}).runtime.args == args  # one rank carries the most
    refused("repeated for each", gpu={"tensorParallelism": 2}, runtime={"args": args})
    refused(
        "repeated for each",
        gpu={"tensorParallelism": 8, "pipelineParallelism": 8},
        runtime={"args": ["-" * 600, "-" * 600]},
    )


def test_environment_values_are_bounded() -> None:
    one = {"name": "BIG", "value": "x" * md.MAX_ENV_VALUE_CHARS}
    assert Runtime.model_validate({"env": [one]}).env[0].value == one["value"]
    with pytest.raises(ValidationError, match=r"runtime\.env values must not exceed"):
        Runtime.model_validate({"env": [one, {"name": "MORE", "value": "y"}]})
    with pytest.raises(ValidationError):
        EnvVar.model_validate({"name": "X", "value": "x" * (md.MAX_ENV_VALUE_CHARS + 1)})


@pytest.mark.parametrize("quantity", ["1e1.5", "-1Gi", "-0.5", "1e", "1e100", "1E+"])
def test_quantities_the_api_server_refuses_are_refused(quantity: str) -> None:
    # Defect 8: these passed the old pattern (fractional exponent, a sign).
    with pytest.raises(ValidationError):
        Runtime.model_validate({"shmSize": quantity})
    with pytest.raises(ValidationError):
        Runtime.model_validate({"resources": {"limits": {"memory": quantity}}})


@pytest.mark.parametrize("quantity", ["2Gi", "500m", "+1", "1.5", ".5", "1e3", "1E-2", "64Ki"])
def test_quantities_kubernetes_accepts_are_accepted(quantity: str) -> None:
    assert Runtime.model_validate({"shmSize": quantity}).shm_size == quantity


@pytest.mark.parametrize(
    "name",
    ["bad key", "", "gpu", "GPU", "kubernetes.io/thing", "requests.example.com/x", "a/b/c", "/x"],
)
def test_resource_names_containers_cannot_request_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="names a resource containers cannot request"):
        Runtime.model_validate({"resources": {"limits": {name: "1"}}})


@pytest.mark.parametrize(
    "name", ["cpu", "memory", "ephemeral-storage", "hugepages-2Mi", "example.com/fpga", "rdma/hca"]
)
def test_resource_names_containers_can_request_are_accepted(name: str) -> None:
    limits = {name: "2Mi" if name.startswith("hugepages-") else "1", "memory": "1Gi"}
    assert name in Runtime.model_validate({"resources": {"limits": limits}}).resources.limits


@pytest.mark.parametrize(
    ("requests", "limits", "match"),
    [
        ({"cpu": "2"}, {"cpu": "1500m"}, "must not exceed"),
        ({"memory": "1Gi"}, {"memory": "1000Mi"}, "must not exceed"),
        ({"example.com/fpga": "1"}, {}, "cannot be overcommitted"),
        ({"example.com/fpga": "1"}, {"example.com/fpga": "2"}, "cannot be overcommitted"),
        ({"hugepages-2Mi": "1Gi"}, {"hugepages-2Mi": "2Gi"}, "cannot be overcommitted"),
        ({}, {"example.com/fpga": "500m"}, "whole units"),
        ({}, {"example.com/fpga": "10P"}, "whole units"),  # beyond the API server's int64
        ({}, {"hugepages-2Mi": "1Gi"}, "need a cpu or memory"),
        ({}, {"hugepages-2Mi": "3Mi", "memory": "1Gi"}, "whole multiple"),
        ({}, {"hugepages-1.5": "3", "memory": "1Gi"}, "whole page size"),
    ],
)
def test_requests_and_limits_the_api_server_refuses_are_refused(
    requests: dict[str, str], limits: dict[str, str], match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        Runtime.model_validate({"resources": {"requests": requests, "limits": limits}})


def test_requests_within_limits_are_accepted() -> None:
    resources = {
        "requests": {"cpu": "1500m", "memory": "1Gi", "example.com/fpga": "2"},
        "limits": {"cpu": "2", "memory": "1Gi", "example.com/fpga": "2"},
    }
    assert Runtime.model_validate({"resources": resources}).resources.requests["cpu"] == "1500m"


@pytest.mark.parametrize(
    "uri", ["s3://b/m\v", "s3://b/m\u00a0x", "s3://b\u2028/m", "s3://b/\u0085"]
)
def test_unicode_whitespace_is_refused_in_uris(uri: str) -> None:
    # Defect 12: Go's \s is ASCII only, so the CRD admitted these and pydantic
    # refused them. Both now refuse every separator and control character.
    pattern = md.Model.model_json_schema()["properties"]["uri"]["pattern"]
    assert "\\s" not in pattern
    assert any(unicodedata.category(c)[0] == "Z" or unicodedata.category(c) == "Cc" for c in uri)
    with pytest.raises(ValidationError):
        spec(model={"uri": uri})


@pytest.mark.parametrize("product", ["A-", "-A", "A.", "A_", "", "A B"])
def test_gpu_products_no_node_label_can_hold_are_refused(product: str) -> None:
    with pytest.raises(ValidationError):
        GPU.model_validate({"product": product})


def test_secret_keys_are_configmap_keys() -> None:
    ref = {"name": "s", "secretKeyRef": {"name": "creds", "key": "bad key"}}
    with pytest.raises(ValidationError):
        EnvVar.model_validate(ref)
    assert EnvVar.model_validate({**ref, "secretKeyRef": {"name": "creds", "key": "a.b_c-d"}})


def test_image_without_whitespace() -> None:
    with pytest.raises(ValidationError):
        Runtime.model_validate({"image": "nvcr.io/triton:25.10 "})


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("token", True),
        (".env", True),
        ("a..b", True),
        ("a.", True),
        (".", False),
        ("..", False),
        ("..data", False),
        ("a/b", False),
    ],
)
def test_secret_keys_are_the_file_names_kubernetes_accepts(key: str, ok: bool) -> None:
    """Found by the dry-run conformance test: the API server refused a Deployment
    whose env used secretKeyRef.key "." (IsConfigMapKey), which admission let through."""
    env = {"name": "A", "secretKeyRef": {"name": "creds", "key": key}}
    if ok:
        assert EnvVar.model_validate(env).secret_key_ref is not None
    else:
        with pytest.raises(ValidationError):
            EnvVar.model_validate(env)
