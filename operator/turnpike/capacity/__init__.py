"""GPU capacity tiers, as pure functions: the controller gathers objects, these
decide. Nothing here talks to the API server."""

from turnpike.capacity.admission import (
    NAMESPACE_POLICY_NAME,
    render_admission_objects,
    render_namespace_policy,
    render_namespace_policy_binding,
)
from turnpike.capacity.classes import (
    CLASS_ORDER,
    CLASS_PRIORITY,
    class_priority,
    preemption_policy,
    priority_class_name,
    priority_class_needs_replacement,
    priority_of,
    render_priority_class,
)
from turnpike.capacity.ledger import (
    Allocation,
    Consumer,
    ConsumerKey,
    Grant,
    Ledger,
    TierUsage,
    account,
    allocate,
    allowed_replicas,
    gpus_held,
    grant,
    held_by,
    is_terminating,
    pool_for,
    usage_of,
)
from turnpike.capacity.namespaces import NamespaceAdmission, namespace_allowed
from turnpike.capacity.protection import TIER_FINALIZER, may_release
from turnpike.capacity.tierstatus import TierResolution, resolve_tier, tier_status

__all__ = [
    "CLASS_ORDER",
    "CLASS_PRIORITY",
    "NAMESPACE_POLICY_NAME",
    "TIER_FINALIZER",
    "Allocation",
    "Consumer",
    "ConsumerKey",
    "Grant",
    "Ledger",
    "NamespaceAdmission",
    "TierResolution",
    "TierUsage",
    "account",
    "allocate",
    "allowed_replicas",
    "class_priority",
    "gpus_held",
    "grant",
    "held_by",
    "is_terminating",
    "may_release",
    "namespace_allowed",
    "pool_for",
    "preemption_policy",
    "priority_class_name",
    "priority_class_needs_replacement",
    "priority_of",
    "render_admission_objects",
    "render_namespace_policy",
    "render_namespace_policy_binding",
    "render_priority_class",
    "resolve_tier",
    "tier_status",
    "usage_of",
]
