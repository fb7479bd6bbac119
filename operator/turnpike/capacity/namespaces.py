"""Which namespaces may draw from a tier.

The same decision is made twice: here, by the controller for every evaluation
(objects created before a tier was narrowed, or while the admission policy was
absent, must not grow), and in CEL by the admission policy of
:mod:`turnpike.capacity.admission`, which refuses new ModelDeployments early.
The two must agree; the tests hold them to the same cases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from turnpike.api.capacitytier import CapacityTier


@dataclass(frozen=True)
class NamespaceAdmission:
    """A yes/no with the sentence a user should see on a no.

    Truthy exactly when allowed, so ``if namespace_allowed(...)`` reads right (a
    NamedTuple would always be truthy).
    """

    allowed: bool
    message: str

    def __bool__(self) -> bool:
        return self.allowed


def namespace_allowed(
    tier: CapacityTier, namespace: str, namespace_labels: Mapping[str, str]
) -> NamespaceAdmission:
    """Allowed when listed in spec.namespaces OR matched by spec.namespaceSelector
    (a union: each names who may use the tier); with neither set, everyone is.

    An empty matchLabels matches every namespace, as an empty label selector does
    everywhere else in Kubernetes.
    """
    spec = tier.spec
    selector = spec.namespace_selector
    if not spec.namespaces and selector is None:
        return NamespaceAdmission(True, f"CapacityTier {tier.name} is open to every namespace")
    if namespace in spec.namespaces:
        return NamespaceAdmission(True, f"namespace {namespace} is listed by {tier.name}")
    if selector is not None and all(
        namespace_labels.get(key) == value for key, value in selector.match_labels.items()
    ):
        return NamespaceAdmission(
            True, f"namespace {namespace} matches the namespaceSelector of {tier.name}"
        )
    return NamespaceAdmission(
        False,
        f"namespace {namespace} may not use CapacityTier {tier.name}: it is neither listed in "
        "spec.namespaces nor matched by spec.namespaceSelector",
    )
