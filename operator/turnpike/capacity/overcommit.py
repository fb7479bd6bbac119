"""Budgets against the real cluster: is "reserved" promised twice? (pure)

Dedicated and reserved tiers promise GPUs: a deployment of such a tier that grows
into its budget expects the scheduler to find the GPUs (preempting on-demand and
spot work if need be). That promise can only be kept when the budgets of every
dedicated and reserved tier together fit the GPUs that the nodes actually have.
On-demand and spot tiers promise nothing (they use what is free), so their
budgets are not counted, and they get no ``Overcommitted`` condition.

How pools combine. A budget keyed by a product (``NVIDIA-H100-80GB-HBM3: 8``)
needs GPUs of that product: nodes labelled ``nvidia.com/gpu.product`` with that
value. A ``*`` budget can be served by a GPU of any product (a deployment that
names none is scheduled on any GPU node), including nodes without the label.
Per-product budgets are served first, since they have no other choice; ``*``
budgets get what the products leave. So, with ``d[P]`` the product's budgets
summed over the tiers, ``s[P]`` its GPUs, and ``d[*]`` the ``*`` budgets:

- product ``P`` is overcommitted when ``d[P] > s[P]`` (a product no node has
  has ``s[P] = 0``);
- ``*`` is overcommitted when ``d[*] > Σ_P max(s[P] − d[P], 0)``, i.e. when the
  ``*`` budgets plus what the products' budgets claim exceed every GPU.

Together these are exactly Hall's condition for the budgets to be served by
distinct GPUs (tests/unit/test_capacity_overcommit.py checks it on every subset
of pools). The tiers named for a pool are those with a positive budget in it: a
``*`` shortfall names the ``*`` tiers, whose promise is the one that cannot be
kept, and says how much the per-product budgets claim.

Which nodes count. GPUs are the node's allocatable ``nvidia.com/gpu`` (the device
plugin lowers it for unhealthy GPUs). A node counts only while it can take new
pods: Ready, not cordoned (``spec.unschedulable``) and not being deleted. A
reserved tier growing into its budget needs somewhere to schedule *now*; a
NotReady node's pods are evicted, and a cordoned one takes no new pods. So a
drain of a node whose GPUs are all promised turns the condition on until the
node is back (nothing is revoked: it is a warning, not an action), and the
message says how many GPUs sit on the nodes left out, so that it explains itself.

Not considered: a tier's nodeSelector (a dedicated tier's budget is compared
with the product's GPUs on every node, not only on its pool's), taints, and what
other, non-Turnpike pods hold. A tier being deleted promises nothing more and is
not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from turnpike.api.capacitytier import ANY_PRODUCT, CapacityTier, TierClass
from turnpike.api.status import ConditionStatus
from turnpike.capacity.ledger import is_terminating
from turnpike.render.deployment import GPU_RESOURCE

CONDITION = "Overcommitted"
REASON_OVERCOMMITTED = "BudgetsExceedNodes"
REASON_WITHIN = "WithinCapacity"
REASON_TERMINATING = "Terminating"
PRODUCT_LABEL = "nvidia.com/gpu.product"
# Classes whose budget is a promise.
PROMISING = (TierClass.DEDICATED, TierClass.RESERVED)
# A node's GPUs without a product label: only '*' budgets can use them.
UNLABELED = ""
MAX_NAMED_TIERS = 10

Wanted = tuple[str, ConditionStatus, str, str]


@dataclass(frozen=True)
class NodeGpus:
    """What the check needs of a node (a few bytes instead of the whole object)."""

    product: str  # nvidia.com/gpu.product, or UNLABELED
    gpus: int  # allocatable nvidia.com/gpu
    schedulable: bool  # Ready, not cordoned, not being deleted


def node_gpus(body: Mapping[str, Any]) -> NodeGpus | None:
    """The node reduced to its GPUs; None for a node without any (nothing to count)."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    gpus = _count((status.get("allocatable") or {}).get(GPU_RESOURCE))
    if gpus <= 0:
        return None
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    schedulable = (
        ready
        and not (body.get("spec") or {}).get("unschedulable")
        and not metadata.get("deletionTimestamp")
    )
    product = str((metadata.get("labels") or {}).get(PRODUCT_LABEL) or UNLABELED)
    return NodeGpus(product=product, gpus=gpus, schedulable=bool(schedulable))


def _count(value: Any) -> int:
    """An extended resource's quantity: a whole number ("8"); anything else counts 0."""
    try:
        return int(str(value))
    except ValueError:
        return 0


@dataclass(frozen=True)
class ClusterGpus:
    """GPUs per product on nodes that count, and on those left out."""

    usable: Mapping[str, int] = field(default_factory=dict)
    left_out: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, nodes: Iterable[NodeGpus]) -> ClusterGpus:
        usable: dict[str, int] = {}
        left_out: dict[str, int] = {}
        for node in nodes:
            into = usable if node.schedulable else left_out
            into[node.product] = into.get(node.product, 0) + node.gpus
        return cls(dict(sorted(usable.items())), dict(sorted(left_out.items())))


@dataclass(frozen=True)
class PoolCommitment:
    """One gpuBudget key, summed over every dedicated and reserved tier."""

    pool: str
    budgeted: int  # the pool's budgets together
    present: int  # GPUs that can serve the pool (for '*': every GPU)
    left_out: int  # GPUs that could, on nodes that do not count now
    tiers: tuple[str, ...]  # tiers with a positive budget in the pool, by name
    claimed_by_products: int = 0  # '*' only: GPUs the per-product budgets take first

    @property
    def available(self) -> int:
        """GPUs this pool's budgets can have."""
        return max(self.present - self.claimed_by_products, 0)

    @property
    def overcommitted(self) -> bool:
        return self.budgeted > self.available


def commitments(tiers: Iterable[CapacityTier], cluster: ClusterGpus) -> dict[str, PoolCommitment]:
    """Every pool budgeted by a dedicated or reserved tier, against the cluster's GPUs."""
    budgeted: dict[str, int] = {}
    named: dict[str, list[str]] = {}
    for tier in tiers:
        if tier.spec.tier_class not in PROMISING or is_terminating(tier):
            continue
        for pool, gpus in tier.spec.gpu_budget.items():
            if gpus > 0:
                budgeted[pool] = budgeted.get(pool, 0) + gpus
                named.setdefault(pool, []).append(tier.name)
    result: dict[str, PoolCommitment] = {}
    claimed = 0
    for pool in sorted(p for p in budgeted if p != ANY_PRODUCT):
        present = cluster.usable.get(pool, 0)
        claimed += min(budgeted[pool], present)
        result[pool] = PoolCommitment(
            pool=pool,
            budgeted=budgeted[pool],
            present=present,
            left_out=cluster.left_out.get(pool, 0),
            tiers=tuple(sorted(set(named[pool]))),
        )
    if ANY_PRODUCT in budgeted:
        result[ANY_PRODUCT] = PoolCommitment(
            pool=ANY_PRODUCT,
            budgeted=budgeted[ANY_PRODUCT],
            present=sum(cluster.usable.values()),
            left_out=sum(cluster.left_out.values()),
            tiers=tuple(sorted(set(named[ANY_PRODUCT]))),
            claimed_by_products=claimed,
        )
    return result


def overcommit_condition(tier: CapacityTier, pools: Mapping[str, PoolCommitment]) -> Wanted | None:
    """The tier's ``Overcommitted`` condition; None for on-demand and spot tiers.

    True when a pool the tier budgets is overcommitted (the message names the
    pool, the budgets' sum, the GPUs present and the tiers), else False.
    """
    if tier.spec.tier_class not in PROMISING:
        return None
    if is_terminating(tier):
        return (
            CONDITION,
            "False",
            REASON_TERMINATING,
            "a tier being deleted promises no more GPUs; its budget is not counted",
        )
    own = [
        pools[p] for p in sorted(tier.spec.gpu_budget) if p in pools and tier.name in pools[p].tiers
    ]
    over = [c for c in own if c.overcommitted]
    if over:
        return (CONDITION, "True", REASON_OVERCOMMITTED, "; ".join(_shortfall(c) for c in over))
    fits = ", ".join(f"{c.pool} {c.budgeted}/{c.available}" for c in own)
    return (
        CONDITION,
        "False",
        REASON_WITHIN,
        "dedicated and reserved budgets fit the GPUs of schedulable Ready nodes"
        + (f" (budgeted/GPUs: {fits})" if fits else ""),
    )


def _shortfall(c: PoolCommitment) -> str:
    gpus = f"{c.present} GPU{'' if c.present == 1 else 's'}"
    if c.pool == ANY_PRODUCT:
        where = f"'*' budgets total {c.budgeted} but the cluster's {gpus}"
        if c.claimed_by_products:
            where += f" leave {c.available} after per-product budgets claim {c.claimed_by_products}"
    else:
        where = f"{c.pool} budgets total {c.budgeted} but nodes have {gpus}"
    if c.left_out:
        where += f" ({c.left_out} more on cordoned or NotReady nodes, not counted)"
    names = ", ".join(c.tiers[:MAX_NAMED_TIERS]) + (", …" if len(c.tiers) > MAX_NAMED_TIERS else "")
    return f"{where}; dedicated and reserved tiers: {names}"
