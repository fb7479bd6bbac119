"""CapacityTier: validation in Python, and the CRD the API server enforces.

The CEL strings were also checked against kube-apiserver 1.36 when written
(every refusal below has a matching CEL rule or schema bound); these tests keep
the Python twins and the generated schema in step with each other.
"""

from __future__ import annotations

import re
import types
from enum import Enum
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from tests import crd_schema
from turnpike.api import capacitytier as ct
from turnpike.api.capacitytier import (
    CapacityTier,
    CapacityTierSpec,
    CapacityTierStatus,
    TierClass,
    Toleration,
)
from turnpike.api.crdgen import CAPACITYTIER, CRDS, build_crd, generated
from turnpike.api.modeldeployment import DNS_LABEL_PATTERN
from turnpike.api.rules import Rule

Schema = dict[str, Any]
H100 = "NVIDIA-H100-80GB-HBM3"


def spec(**fields: Any) -> CapacityTierSpec:
    fields.setdefault("class", "on-demand")
    fields.setdefault("gpuBudget", {"*": 8})
    return CapacityTierSpec.model_validate(fields)


def refused(match: str, **fields: Any) -> None:
    with pytest.raises(ValidationError, match=match):
        spec(**fields)


# --- Validation ----------------------------------------------------------------


def test_minimal_tier() -> None:
    s = spec()
    assert s.tier_class is TierClass.ON_DEMAND
    assert (s.priority, s.default, s.namespaces, s.namespace_selector) == (None, False, [], None)
    assert s.to_k8s() == {
        "class": "on-demand",
        "gpuBudget": {"*": 8},
        "nodeSelector": {},
        "tolerations": [],
        "namespaces": [],
        "default": False,
    }


def test_class_is_spelled_class_in_manifests_and_tier_class_in_python() -> None:
    assert spec(**{"class": "spot"}).tier_class is TierClass.SPOT
    by_name = CapacityTierSpec.model_validate({"tier_class": "spot", "gpuBudget": {"*": 1}})
    assert by_name.tier_class is TierClass.SPOT
    assert "class" in by_name.to_k8s()


@pytest.mark.parametrize("value", ["cheap", "Spot", "ondemand", "", "preemptible"])
def test_unknown_class_is_refused(value: str) -> None:
    refused("class", **{"class": value})


def test_class_is_required() -> None:
    with pytest.raises(ValidationError, match="class"):
        CapacityTierSpec.model_validate({"gpuBudget": {"*": 1}})


@pytest.mark.parametrize("gpus", [-1, -8, 100_001])
def test_budget_out_of_range_is_refused(gpus: int) -> None:
    refused("gpuBudget", gpuBudget={"*": gpus})


def test_budget_of_zero_freezes_a_pool() -> None:
    assert spec(gpuBudget={"*": 0}).gpu_budget == {"*": 0}


@pytest.mark.parametrize(
    "key", ["*", H100, "NVIDIA-A100-SXM4-80GB", "Tesla-T4", "NVIDIA_L4", "a" * 63]
)
def test_budget_keys_accepted(key: str) -> None:
    assert key in spec(gpuBudget={key: 1}).gpu_budget


@pytest.mark.parametrize("key", ["", "**", "*H100", "H100 80GB", "-H100", "a" * 64, "nvidia/x"])
def test_budget_keys_refused(key: str) -> None:
    refused("gpuBudget keys", gpuBudget={key: 1})


def test_budget_is_required_and_bounded() -> None:
    refused("gpuBudget", gpuBudget={})
    refused("gpuBudget", gpuBudget={f"P{i}": 1 for i in range(ct.MAX_BUDGET_ENTRIES + 1)})
    with pytest.raises(ValidationError, match="gpuBudget"):
        CapacityTierSpec.model_validate({"class": "spot"})


@pytest.mark.parametrize(
    ("priority", "ok"), [(0, True), (-5, True), (10**9, True), (10**9 + 1, False)]
)
def test_priority_stays_in_the_user_range(priority: int, ok: bool) -> None:
    if ok:
        assert spec(priority=priority).priority == priority
    else:
        refused("priority", priority=priority)


def test_dedicated_needs_a_node_selector() -> None:
    refused("dedicated tier needs a nodeSelector", **{"class": "dedicated"})
    refused("dedicated tier needs a nodeSelector", **{"class": "dedicated"}, nodeSelector={})
    s = spec(**{"class": "dedicated"}, nodeSelector={"turnpike.dev/pool": "team-a"})
    assert s.node_selector == {"turnpike.dev/pool": "team-a"}


def test_node_selector_keys_and_values() -> None:
    assert spec(nodeSelector={"nvidia.com/gpu.product": H100}).node_selector
    refused("nodeSelector keys", nodeSelector={"-bad": "x"})
    refused("nodeSelector keys", nodeSelector={"Bad.Prefix/x": "y"})
    refused("nodeSelector", nodeSelector={"pool": "has space"})
    refused("nodeSelector", nodeSelector={f"k{i}": "v" for i in range(17)})


@pytest.mark.parametrize(
    "toleration",
    [
        {"key": "turnpike.dev/pool", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "turnpike.dev/pool", "value": "team-a", "effect": "NoExecute"},
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"},
        {"operator": "Exists"},
        {"key": "a", "operator": "Exists", "value": ""},
    ],
)
def test_tolerations_accepted(toleration: dict[str, Any]) -> None:
    parsed = Toleration.model_validate(toleration)
    assert spec(tolerations=[toleration]).tolerations == [parsed]
    assert parsed.to_pod()["operator"] == toleration.get("operator", "Equal")


@pytest.mark.parametrize(
    ("toleration", "match"),
    [
        ({"key": "a", "operator": "In"}, "operator"),
        ({"key": "a", "operator": "exists"}, "operator"),
        ({"key": "a", "operator": "Exists", "value": "x"}, "must not set a value"),
        ({"value": "x"}, "without a key must use operator Exists"),
        ({"key": "a", "effect": "NoRun"}, "effect"),
        ({"key": "bad key"}, "key"),
    ],
)
def test_tolerations_refused(toleration: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Toleration.model_validate(toleration)


def test_namespaces() -> None:
    assert spec(namespaces=["ml-prod", "ml-dev"]).namespaces == ["ml-prod", "ml-dev"]
    refused("namespaces must not repeat", namespaces=["a", "a"])
    refused("namespaces", namespaces=["Not_A_Label"])
    refused("namespaces", namespaces=[f"n{i}" for i in range(257)])


def test_namespace_selector_is_match_labels_only() -> None:
    s = spec(namespaceSelector={"matchLabels": {"team": "ml"}})
    assert s.namespace_selector is not None
    assert s.namespace_selector.match_labels == {"team": "ml"}
    assert spec(namespaceSelector={}).namespace_selector is not None
    # matchExpressions is not in the CRD: the API server refuses it at admission.
    refused("matchLabels keys", namespaceSelector={"matchLabels": {"bad key": "x"}})


def test_undeclared_fields_are_not_part_of_the_model() -> None:
    """budget / preemptionPolicy are not fields (the policy derives from the class); the
    API server refuses them at admission, and the operator never reads them."""
    s = spec(budget={"*": 1}, preemptionPolicy="Never")
    assert "budget" not in s.model_dump() and "preemption_policy" not in s.model_dump()


def test_tier_names_are_dns_labels() -> None:
    body: dict[str, Any] = {"spec": {"class": "spot", "gpuBudget": {"*": 1}}}
    assert CapacityTier.from_k8s({**body, "metadata": {"name": "spot-a100"}}).name == "spot-a100"
    for name in ("a.b", "Spot", "x" * 64):
        with pytest.raises(ValidationError, match="DNS labels"):
            CapacityTier.from_k8s({**body, "metadata": {"name": name}})


def test_status_round_trips() -> None:
    raw = {
        "observedGeneration": 3,
        "budget": {"*": 8},
        "granted": {"*": 4},
        "inUse": {"*": 2},
        "free": {"*": 4},
        "budgetSummary": "*=8",
        "consumers": [{"namespace": "a", "name": "m", "pool": "*", "replicas": 2, "gpus": 4}],
    }
    dumped = CapacityTierStatus.model_validate(raw).to_k8s()
    assert dumped["consumers"][0]["limited"] is False
    assert {k: v for k, v in dumped.items() if k not in ("conditions", "consumers")} == {
        k: v for k, v in raw.items() if k != "consumers"
    }


# --- The CEL text and its Python twin talk about the same fields --------------

_RULE_SETS = {
    name: value
    for name, value in vars(ct).items()
    if name.endswith("_RULES") and isinstance(value, tuple)
}
_MODELS = [v for v in vars(ct).values() if isinstance(v, type) and issubclass(v, BaseModel)]
_ALIASES = {
    name: info.alias or name for model in _MODELS for name, info in model.model_fields.items()
}
_ENUM_VALUES = {
    member.value
    for v in vars(ct).values()
    if isinstance(v, type) and issubclass(v, Enum)
    for member in v
}


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _python_fields(rule: Rule) -> set[str]:
    assert rule.check is not None
    return {_ALIASES[n] for n in _names(rule.check.__code__) if n in _ALIASES}


def _cel_fields(rule: Rule) -> set[str]:
    return {
        field
        for chain in re.findall(r"\b(?:self|oldSelf)((?:\.\w+(?![\w(]))+)", rule.cel)
        for field in chain.split(".")[1:]
    }


_ALL_RULES = [
    pytest.param(rule, id=f"{name}[{i}]")
    for name, rules in sorted(_RULE_SETS.items())
    for i, rule in enumerate(rules)
]


def test_rule_sets_are_found() -> None:
    assert set(_RULE_SETS) == {
        "TOLERATION_RULES",
        "MATCH_LABELS_RULES",
        "CAPACITY_TIER_RULES",
        "CAPACITY_TIER_NAME_RULES",
    }


@pytest.mark.parametrize("rule", _ALL_RULES)
def test_every_rule_has_a_python_twin(rule: Rule) -> None:
    assert rule.check is not None


@pytest.mark.parametrize("rule", _ALL_RULES)
def test_cel_and_python_read_the_same_fields(rule: Rule) -> None:
    # "metadata" is a field of the object but not of a model alias map here.
    assert _cel_fields(rule) - {"metadata"} == _python_fields(rule) - {"metadata"}, rule.cel


@pytest.mark.parametrize("rule", _ALL_RULES)
def test_cel_string_literals_are_enum_values_or_budget_keys(rule: Rule) -> None:
    literals = {lit for lit in re.findall(r"'([^']*)'", rule.cel) if not lit.startswith("^")}
    assert literals <= _ENUM_VALUES | {"*", ""}, rule.cel


@pytest.mark.parametrize("rule", _ALL_RULES)
def test_cel_regexes_are_the_python_ones(rule: Rule) -> None:
    # The Python twins use the module's patterns; the CEL must carry the same text
    # (and no backslash escapes, which CEL string literals reject).
    patterns = set(re.findall(r"matches\('([^']*)'\)", rule.cel))
    known = {ct.GPU_PRODUCT_PATTERN, ct.QUALIFIED_NAME_PATTERN, DNS_LABEL_PATTERN}
    assert patterns <= known, rule.cel
    assert "\\" not in rule.cel


# --- The generated CRD ---------------------------------------------------------


def _crd() -> Schema:
    return build_crd(CAPACITYTIER)


def _root() -> Schema:
    return crd_schema.root(_crd())


def _at(path: str) -> Schema:
    return crd_schema.at(_crd(), path)


_nodes = crd_schema.nodes


def test_registered_and_written() -> None:
    assert CAPACITYTIER in CRDS
    assert "turnpike.dev_capacitytiers.yaml" in generated()
    on_disk = yaml.safe_load(generated()["turnpike.dev_capacitytiers.yaml"])
    assert on_disk == _crd()


def test_names_scope_and_subresources() -> None:
    spec_ = _crd()["spec"]
    assert spec_["scope"] == "Cluster"
    assert spec_["names"]["kind"] == "CapacityTier"
    assert spec_["names"]["shortNames"] == ["ct"]
    assert spec_["names"]["plural"] == "capacitytiers"
    (version,) = spec_["versions"]
    assert version["subresources"] == {"status": {}}  # no scale: a tier is not a workload


def test_printer_columns() -> None:
    (version,) = _crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == [
        "Class",
        "Priority",
        "Budget",
        "Granted",
        "Free",
        "Default",
        "Used-24h",
        "Age",
    ]
    assert columns["Used-24h"]["jsonPath"] == ".status.usage.summary"
    assert columns["Class"]["jsonPath"] == ".spec.class"
    assert columns["Priority"]["type"] == "integer"
    for name, field in (("Budget", "budgetSummary"), ("Granted", "grantedSummary")):
        assert columns[name]["jsonPath"] == f".status.{field}"
    assert columns["Free"]["jsonPath"] == ".status.freeSummary"
    status = _at("status")["properties"]
    for column in columns.values():
        path = column["jsonPath"].split(".")[1:]
        if path[0] == "status":
            assert path[1] in status, column


def test_schema_is_structural() -> None:
    for path, node in _nodes(_root()):
        assert isinstance(node.get("type"), str), f"{path} has no type"
        forbidden = {"$ref", "anyOf", "allOf", "oneOf", "propertyNames", "patternProperties"}
        assert not forbidden & set(node), path


def test_collections_touched_by_cel_are_bounded() -> None:
    for path, node in _nodes(_at("spec")):
        if node["type"] == "array":
            assert "maxItems" in node, path
        if "additionalProperties" in node:
            assert "maxProperties" in node, path


def test_cel_rules_reference_existing_fields() -> None:
    checked = 0
    for path, node in _nodes(_root()):
        for rule in node.get("x-kubernetes-validations", ()):
            for chain in re.findall(r"\bself((?:\.\w+(?![\w(]))+)", rule["rule"]):
                target = node
                for name in chain.split(".")[1:]:
                    if name == "metadata":  # root rules may read metadata.name
                        break
                    assert name in target.get("properties", {}), f"{path}: {rule}"
                    target = target["properties"][name]
                checked += 1
            if "fieldPath" in rule:
                target = node
                for name in rule["fieldPath"].split(".")[1:]:
                    assert name in target.get("properties", {}), f"{path}: {rule}"
                    target = target["properties"][name]
    assert checked >= 8


def test_schema_details() -> None:
    assert _at("spec")["required"] == ["class", "gpuBudget"]
    assert _at("spec.class")["enum"] == ["dedicated", "reserved", "on-demand", "spot"]
    budget = _at("spec.gpuBudget")
    assert (budget["minProperties"], budget["maxProperties"]) == (1, ct.MAX_BUDGET_ENTRIES)
    assert budget["additionalProperties"]["minimum"] == 0
    assert _at("spec.namespaces")["x-kubernetes-list-type"] == "set"
    toleration = _at("spec.tolerations")["items"]
    assert toleration["properties"]["operator"]["enum"] == ["Exists", "Equal"]
    assert len(toleration["x-kubernetes-validations"]) == 2
    assert _root()["x-kubernetes-validations"][0]["rule"].startswith("size(self.metadata.name)")
    conditions = _at("status.conditions")
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert _root()["description"].startswith("CapacityTier")
