"""Keeping a CapacityTier alive while ModelDeployments still draw from it.

Admission cannot do this: a ValidatingAdmissionPolicy on DELETE sees only the
tier itself (and parameters fixed by its binding), never the ModelDeployments
that name it, and a status-based check would trust a count that may be stale.
So the operator puts a finalizer on every tier (the pattern of
kubernetes.io/pvc-protection):

1. On every tier evaluation, add :data:`TIER_FINALIZER` if missing.
2. When the tier has a deletionTimestamp, it is Terminating: the ledger grants
   no growth (``allowed_replicas`` reports TierTerminating), running replicas
   are kept, and the tier's Ready condition says what it waits for.
3. Remove the finalizer once :func:`may_release` says no ModelDeployment uses
   the tier any more (none names it, and, for the default tier, none relies on
   it by leaving spec.tier unset).

``kubectl delete capacitytier`` therefore returns at once and the tier lingers
as Terminating until its consumers move or go, which is the feedback users know
from PersistentVolumeClaims in use. Removing the finalizer by hand is the
escape hatch; the deployments then report TierNotFound and keep what runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from turnpike.api.constants import GROUP
from turnpike.capacity.ledger import Consumer

TIER_FINALIZER = f"{GROUP}/capacity-tier-protection"


def may_release(consumers: Sequence[Consumer]) -> tuple[bool, str]:
    """Whether the finalizer may go, and a message for the tier's status otherwise.

    Every ModelDeployment that resolves to the tier counts, even one scaled to
    zero: deleting the tier under it would leave it pointing at nothing.
    """
    if not consumers:
        return True, "no ModelDeployment uses the tier"
    names = ", ".join(str(c.key) for c in sorted(consumers, key=lambda c: c.key)[:10])
    more = f" and {len(consumers) - 10} more" if len(consumers) > 10 else ""
    return False, f"{len(consumers)} ModelDeployments still use the tier: {names}{more}"
