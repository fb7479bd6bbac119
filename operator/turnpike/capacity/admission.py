"""Refusing ModelDeployments from namespaces a tier does not admit, at admission.

A ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) cannot read
arbitrary objects, but it can take *parameters*: objects of a ``paramKind``
chosen by its binding. The binding's ``paramRef`` picks them by name or by
label selector, fixed per binding rather than per request, so the policy
cannot look up "the tier this ModelDeployment names". It does not need to:

    paramRef: {selector: {}, parameterNotFoundAction: Allow}

binds *every* CapacityTier, and the API server evaluates the policy once per
tier and denies the request when any evaluation fails. Each evaluation asks one
question of its tier ("if this ModelDeployment uses me, is its namespace
allowed?"), which is exactly "the namespace is allowed by the tier it uses".
So one static policy and one static binding cover every tier, present and
future, with nothing to render or garbage-collect per tier. Checked against
kube-apiserver 1.36.

What admission cannot do, the controller does (see
:func:`turnpike.capacity.ledger.allowed_replicas`): it denies growth to a
disallowed namespace whatever admission let through (objects created before the
tier was narrowed, while the policy was missing, or whose default tier changed).

Only creation and a change of spec.tier are checked: an update that leaves the
tier alone (a finalizer removed, labels edited, the operator's own writes) must
never be refused, or narrowing a tier would make its existing deployments
impossible to delete.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnpike.api.constants import GROUP, VERSION
from turnpike.render.labels import LABEL_MANAGED_BY, LABEL_PART_OF, MANAGER

NAMESPACE_POLICY_NAME = f"capacity-tier-namespaces.{GROUP}"

# The effective tier name: spec.tier, or '' for "the default tier".
_TIER_OF_OBJECT = "has(object.spec.tier) ? object.spec.tier : ''"
_TIER_OF_OLD_OBJECT = "has(oldObject.spec.tier) ? oldObject.spec.tier : ''"

# The CEL twin of turnpike.capacity.namespaces.namespace_allowed.
_VARIABLES = (
    ("tier", _TIER_OF_OBJECT),
    (
        "usesThisTier",
        "variables.tier == params.metadata.name || "
        "(variables.tier == '' && has(params.spec.default) && params.spec.default)",
    ),
    (
        "openToAll",
        "(!has(params.spec.namespaces) || size(params.spec.namespaces) == 0) && "
        "!has(params.spec.namespaceSelector)",
    ),
    (
        "listed",
        "has(params.spec.namespaces) && namespaceObject.metadata.name in params.spec.namespaces",
    ),
    (
        "selected",
        "has(params.spec.namespaceSelector) && "
        "(!has(params.spec.namespaceSelector.matchLabels) || "
        "params.spec.namespaceSelector.matchLabels.all(k, "
        "has(namespaceObject.metadata.labels) && k in namespaceObject.metadata.labels && "
        "namespaceObject.metadata.labels[k] == params.spec.namespaceSelector.matchLabels[k]))",
    ),
)


def _labels() -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGER, LABEL_PART_OF: MANAGER}


def render_namespace_policy() -> dict[str, Any]:
    """The ValidatingAdmissionPolicy; static, so the operator can apply it at
    startup (after the CapacityTier CRD exists) or ship it with the manifests."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": NAMESPACE_POLICY_NAME, "labels": _labels()},
        "spec": {
            # Fail closed: a broken or missing parameter kind must not let a
            # namespace slip into a tier. The controller enforces the same rule,
            # so Ignore would only trade an early error for a stuck deployment.
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CapacityTier"},
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": [VERSION],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["modeldeployments"],
                    }
                ]
            },
            "matchConditions": [
                {
                    "name": "tier-chosen-or-changed",
                    "expression": "request.operation == 'CREATE' || "
                    f"({_TIER_OF_OBJECT}) != ({_TIER_OF_OLD_OBJECT})",
                }
            ],
            "variables": [{"name": name, "expression": expr} for name, expr in _VARIABLES],
            "validations": [
                {
                    "expression": "!variables.usesThisTier || variables.openToAll || "
                    "variables.listed || variables.selected",
                    "messageExpression": "'namespace ' + namespaceObject.metadata.name + "
                    "' may not use CapacityTier ' + params.metadata.name + "
                    "': it is neither listed in spec.namespaces nor matched by "
                    "spec.namespaceSelector'",
                    "reason": "Forbidden",
                }
            ],
        },
    }


def render_namespace_policy_binding(
    namespace_selector: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The binding that feeds every CapacityTier to the policy as a parameter.

    ``parameterNotFoundAction: Allow``: with no tiers at all there is nothing
    to restrict. ``namespace_selector`` narrows which namespaces' requests are
    checked (tests use it to stay inside their own namespace).
    """
    spec: dict[str, Any] = {
        "policyName": NAMESPACE_POLICY_NAME,
        "validationActions": ["Deny"],
        "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
    }
    if namespace_selector is not None:
        spec["matchResources"] = {"namespaceSelector": dict(namespace_selector)}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": NAMESPACE_POLICY_NAME, "labels": _labels()},
        "spec": spec,
    }


TIER_DELETION_POLICY_NAME = "turnpike-capacity-tier-in-use"


def render_tier_deletion_policy() -> dict[str, Any]:
    """Refuse `kubectl delete capacitytier` while the tier's status lists consumers.

    The status is the operator's view and may lag a just-created deployment; the
    tier's finalizer (turnpike.capacity.protection) is the backstop. This policy
    gives the common case a clear, immediate answer instead of a tier that
    silently lingers as Terminating.
    """
    consumers = "oldObject.status.consumers"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": TIER_DELETION_POLICY_NAME, "labels": _labels()},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": [VERSION],
                        "operations": ["DELETE"],
                        "resources": ["capacitytiers"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": f"!has(oldObject.status) || !has({consumers}) || "
                    f"size({consumers}) == 0",
                    "messageExpression": "'CapacityTier ' + oldObject.metadata.name + "
                    f"' is still used by ' + {consumers}.map(c, c.namespace + '/' + c.name)"
                    ".join(', ') + '; move those ModelDeployments to another tier or delete "
                    "them first'",
                    "reason": "Forbidden",
                }
            ],
        },
    }


def render_tier_deletion_binding() -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": TIER_DELETION_POLICY_NAME, "labels": _labels()},
        "spec": {"policyName": TIER_DELETION_POLICY_NAME, "validationActions": ["Deny"]},
    }


def render_admission_objects() -> list[dict[str, Any]]:
    """Everything to apply, in order (each binding after its policy)."""
    return [
        render_namespace_policy(),
        render_namespace_policy_binding(),
        render_tier_deletion_policy(),
        render_tier_deletion_binding(),
    ]
