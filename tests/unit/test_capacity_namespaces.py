"""Which namespaces may use a tier: the Python rule and the admission policy.

The admission policy's CEL was run against kube-apiserver 1.36 on the same
cases as ``CASES`` below (listed, selected, open, empty selector, default tier,
tier change on update, finalizer removal on a narrowed tier). Without a CEL
evaluator here, these tests pin the policy's structure and the fields it reads.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from turnpike.api.capacitytier import CapacityTier
from turnpike.api.crdgen import CAPACITYTIER, MODELDEPLOYMENT, build_crd
from turnpike.capacity.admission import (
    NAMESPACE_POLICY_NAME,
    render_admission_objects,
    render_namespace_policy,
    render_namespace_policy_binding,
)
from turnpike.capacity.namespaces import namespace_allowed


def tier(**spec: Any) -> CapacityTier:
    return CapacityTier.from_k8s(
        {"metadata": {"name": "t"}, "spec": {"class": "reserved", "gpuBudget": {"*": 1}, **spec}}
    )


CASES = [
    # (tier spec, namespace, namespace labels, allowed)
    ({}, "any", {}, True),
    ({"namespaces": ["ml"]}, "ml", {}, True),
    ({"namespaces": ["ml"]}, "web", {}, False),
    ({"namespaceSelector": {"matchLabels": {"team": "ml"}}}, "x", {"team": "ml"}, True),
    ({"namespaceSelector": {"matchLabels": {"team": "ml"}}}, "x", {"team": "web"}, False),
    ({"namespaceSelector": {"matchLabels": {"team": "ml"}}}, "x", {}, False),
    ({"namespaceSelector": {"matchLabels": {"team": "ml", "env": "prod"}}}, "x",
     {"team": "ml"}, False),
    ({"namespaceSelector": {"matchLabels": {"team": "ml", "env": "prod"}}}, "x",
     {"team": "ml", "env": "prod", "extra": "y"}, True),
    ({"namespaceSelector": {}}, "any", {}, True),  # an empty selector matches everything
    ({"namespaceSelector": {"matchLabels": {}}}, "any", {}, True),
    # listed OR selected
    ({"namespaces": ["ml"], "namespaceSelector": {"matchLabels": {"team": "ml"}}}, "ml", {},
     True),
    ({"namespaces": ["ml"], "namespaceSelector": {"matchLabels": {"team": "ml"}}}, "x",
     {"team": "ml"}, True),
    ({"namespaces": ["ml"], "namespaceSelector": {"matchLabels": {"team": "ml"}}}, "x", {},
     False),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "namespace", "labels", "allowed"), CASES)
def test_namespace_allowed(
    spec: dict[str, Any], namespace: str, labels: dict[str, str], allowed: bool
) -> None:
    decision = namespace_allowed(tier(**spec), namespace, labels)
    assert decision.allowed is allowed
    assert bool(decision) is allowed
    assert decision.message
    if not allowed:
        assert namespace in decision.message and "CapacityTier t" in decision.message


# --- The ValidatingAdmissionPolicy ------------------------------------------------


def test_one_static_policy_and_binding_cover_every_tier() -> None:
    policy, binding = render_admission_objects()[:2]
    assert policy["kind"] == "ValidatingAdmissionPolicy"
    assert binding["kind"] == "ValidatingAdmissionPolicyBinding"
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert policy["metadata"]["name"] == binding["spec"]["policyName"] == NAMESPACE_POLICY_NAME
    assert policy["spec"]["paramKind"] == {"apiVersion": "turnpike.dev/v1alpha1",
                                           "kind": "CapacityTier"}  # fmt: skip
    # Every tier is a parameter; the policy is evaluated once per tier and ANDed.
    assert binding["spec"]["paramRef"] == {"selector": {}, "parameterNotFoundAction": "Allow"}
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["modeldeployments"]  # not /status, not /scale
    assert rule["operations"] == ["CREATE", "UPDATE"]


def test_only_creation_and_tier_changes_are_checked() -> None:
    # Updates that keep the tier (finalizer removal, the operator's own writes)
    # must pass even after the tier was narrowed, or such deployments could
    # never be deleted.
    (condition,) = render_namespace_policy()["spec"]["matchConditions"]
    expression = condition["expression"]
    assert "request.operation == 'CREATE'" in expression
    assert "object.spec.tier" in expression and "oldObject.spec.tier" in expression


def test_binding_can_be_narrowed_to_namespaces() -> None:
    selector = {"matchLabels": {"probe": "yes"}}
    binding = render_namespace_policy_binding(selector)
    assert binding["spec"]["matchResources"] == {"namespaceSelector": selector}
    assert "matchResources" not in render_namespace_policy_binding()["spec"]


def _expressions() -> str:
    spec = render_namespace_policy()["spec"]
    parts = [v["expression"] for v in spec["variables"]]
    parts += [v["expression"] for v in spec["validations"]]
    parts += [v["messageExpression"] for v in spec["validations"]]
    parts += [c["expression"] for c in spec["matchConditions"]]
    return "\n".join(parts)


def _properties(crd: dict[str, Any], path: list[str]) -> dict[str, Any]:
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["properties"][name]
    properties: dict[str, Any] = node["properties"]
    return properties


def test_policy_reads_fields_that_exist() -> None:
    text = _expressions()
    tier_spec = _properties(build_crd(CAPACITYTIER), ["spec"])
    for chain in re.findall(r"\bparams\.spec((?:\.\w+(?![\w(]))+)", text):
        fields = chain.split(".")[1:]
        node = tier_spec
        for name in fields:
            assert name in node, f"params.spec{chain}"
            node = node[name].get("properties", {})
    md_spec = _properties(build_crd(MODELDEPLOYMENT), ["spec"])
    for chain in re.findall(r"\b(?:object|oldObject)\.spec\.(\w+)", text):
        assert chain in md_spec
    # Every variable used is defined, in an order where each sees the ones before.
    defined: list[str] = []
    for variable in render_namespace_policy()["spec"]["variables"]:
        for used in re.findall(r"variables\.(\w+)", variable["expression"]):
            assert used in defined, used
        defined.append(variable["name"])
    assert set(re.findall(r"variables\.(\w+)", text)) <= set(defined)


def test_policy_avoids_cel_reserved_words() -> None:
    # ``namespace`` is reserved in CEL (a field of that name must be written
    # __namespace__); the policy reads namespaceObject.metadata.name instead.
    assert not re.search(r"\.namespace\b", _expressions())
