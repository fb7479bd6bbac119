"""GPU accounting of one CapacityTier: who holds what, and who may grow.

Everything here is pure. :func:`allowed_replicas` answers for every consumer of
a tier at once, in one deterministic order (the tier's status uses it): two
deployments asking for the last GPUs are not two independent questions ("is
there room for me?", both answered yes) but one ledger in which the
earlier-created one is charged first and the later one sees what is left. A
reconcile asks :func:`allocate` for its one consumer against the sums of what
the others hold, which the operator's cache keeps incrementally; the controller
serializes evaluations per tier (one lock per tier, held from the evaluation
until its grant is counted in those sums) so that no two evaluations run on
stale copies of each other's results.

Rules, in the order they are applied:

1. Nothing that runs is revoked. A consumer keeps ``min(current, desired)``
   replicas whatever the budget says now: budgets shrink, namespaces are
   removed from tiers, tiers are deleted, and in none of these cases does the
   operator kill serving pods; the tier reports the overcommit instead.
   Scaling down gives GPUs back within the same evaluation: the budget is a
   logical limit, and waiting for terminating pods is the scheduler's business.
2. Growth is first come, first served: by creation time, then namespace/name,
   so the order never depends on list order or on which event arrived first.
3. A deployment that is not running gets at least its floor
   (``min(min_replicas, desired)``) or nothing: half a minimum serves no one
   and would hold GPUs another deployment could use. One that does not fit
   does not block the queue; later, smaller deployments may still fit.
4. Pools never borrow: a product draws from its own gpuBudget entry, or from
   ``*`` when the product has none; a deployment that names no product can be
   scheduled on any GPU and so draws from ``*`` only.
5. A rollout's surge pod holds GPUs like any other pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import NamedTuple, TypeAlias

from turnpike.api.capacitytier import ANY_PRODUCT, CapacityTier
from turnpike.capacity.namespaces import namespace_allowed

# The renderer's rolling update adds this many pods while rolling (when the tier
# has room for them: see Allocation.can_surge).
from turnpike.render.deployment import MAX_SURGE

# Machine-readable reasons; the controller can use them as condition reasons.
REASON_GRANTED = "Granted"
REASON_SCALING_DOWN = "ScalingDown"
REASON_BUDGET_EXHAUSTED = "BudgetExhausted"
REASON_MIN_DOES_NOT_FIT = "MinReplicasDoNotFit"
REASON_NO_BUDGET = "NoBudgetForProduct"
REASON_NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
REASON_TIER_TERMINATING = "TierTerminating"


def gpus_held(replicas: int, gpus_per_replica: int, rolling: bool = False) -> int:
    """GPUs a Deployment of ``replicas`` pods holds.

    While a rollout is in progress the Deployment runs up to ``maxSurge`` extra
    pods, each with a full replica's GPUs; a Deployment scaled to zero rolls out
    nothing, so it has no surge either. Whether a rollout is in progress is the
    caller's knowledge (the child Deployment's generation not yet observed, or
    fewer updated replicas than desired, or more pods than desired).
    """
    if replicas < 0 or gpus_per_replica < 0:
        raise ValueError("replicas and gpus_per_replica must not be negative")
    surge = MAX_SURGE if rolling and replicas > 0 else 0
    return (replicas + surge) * gpus_per_replica


def replicas_within(gpus: int, gpus_per_replica: int, rolling: bool = False) -> int:
    """The most replicas whose :func:`gpus_held` fits in ``gpus`` (inverse of it)."""
    if gpus_per_replica <= 0:
        raise ValueError("gpus_per_replica must be positive")
    whole = max(gpus, 0) // gpus_per_replica
    if rolling:
        return max(whole - MAX_SURGE, 0)
    return whole


class ConsumerKey(NamedTuple):
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, kw_only=True)
class Consumer:
    """A ModelDeployment as the tier sees it.

    ``desired_replicas`` is what it asks for now (spec.replicas, or the
    autoscaler's choice); ``current_replicas`` is what its Deployment already has
    (the child Deployment's spec.replicas: replicas granted earlier and never
    revoked); ``min_replicas`` the smallest footprint worth starting (with
    autoscaling, spec.minReplicas; without, spec.replicas itself, so a fixed-size
    deployment is all or nothing).
    """

    namespace: str
    name: str
    gpus_per_replica: int
    desired_replicas: int
    created_at: datetime | str
    product: str | None = None
    min_replicas: int = 1
    current_replicas: int = 0
    rolling: bool = False
    # Labels of the consumer's namespace, for tiers that select namespaces by label.
    namespace_labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gpus_per_replica < 1:
            raise ValueError(f"{self.key}: gpus_per_replica must be at least 1")
        if min(self.desired_replicas, self.min_replicas, self.current_replicas) < 0:
            raise ValueError(f"{self.key}: replica counts must not be negative")
        _timestamp(self.created_at)  # refuse unparsable timestamps early

    @property
    def key(self) -> ConsumerKey:
        return ConsumerKey(self.namespace, self.name)

    @property
    def floor(self) -> int:
        """Fewest replicas worth starting; never more than it asks for."""
        return min(self.min_replicas, self.desired_replicas)

    @property
    def kept(self) -> int:
        """Replicas it keeps whatever happens: running ones it still wants."""
        return min(self.current_replicas, self.desired_replicas)


def order_key(consumer: Consumer) -> tuple[datetime, str, str]:
    """First come, first served; namespace/name break ties within one second
    (creationTimestamp has second precision)."""
    return (_timestamp(consumer.created_at), consumer.namespace, consumer.name)


def _timestamp(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    # The API server writes UTC ("...Z"); a naive value from a caller means UTC too.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def pool_for(budget: Mapping[str, int], product: str | None) -> str | None:
    """The gpuBudget entry a consumer draws from, or None when the tier has none."""
    if product is not None and product in budget:
        return product
    if ANY_PRODUCT in budget:
        return ANY_PRODUCT
    return None


def _pool_or_product(budget: Mapping[str, int], consumer: Consumer) -> str:
    # Unbudgeted holdings are still counted, under the product they use, so an
    # overcommit shows in status instead of vanishing.
    return pool_for(budget, consumer.product) or consumer.product or ANY_PRODUCT


@dataclass(frozen=True)
class TierUsage:
    """GPUs per pool: the budget, what is granted, and what is left."""

    budget: Mapping[str, int]
    granted: Mapping[str, int]

    @property
    def free(self) -> dict[str, int]:
        """Per budgeted pool, never negative (an overcommitted pool has 0 free)."""
        return {pool: max(self.headroom(pool), 0) for pool in self.budget}

    def headroom(self, pool: str) -> int:
        """Budget minus grants; negative when overcommitted, 0 budget for unknown pools."""
        return self.budget.get(pool, 0) - self.granted.get(pool, 0)

    @property
    def overcommitted(self) -> dict[str, int]:
        """Pools granted beyond their budget (only ever by never-revoked replicas)."""
        return {
            pool: gpus - self.budget.get(pool, 0)
            for pool, gpus in sorted(self.granted.items())
            if gpus > self.budget.get(pool, 0)
        }


class Ledger:
    """Running totals while a tier is evaluated. Mutable on purpose, and local to
    one evaluation: it never outlives the pure call that created it."""

    def __init__(self, budget: Mapping[str, int]) -> None:
        self._budget = dict(budget)
        self._granted: dict[str, int] = {}

    def charge(self, pool: str, gpus: int) -> None:
        if gpus:
            self._granted[pool] = self._granted.get(pool, 0) + gpus

    def headroom(self, pool: str) -> int:
        return self._budget.get(pool, 0) - self._granted.get(pool, 0)

    def usage(self) -> TierUsage:
        return TierUsage(budget=dict(self._budget), granted=dict(sorted(self._granted.items())))


def account(tier: CapacityTier, consumers: Iterable[Consumer]) -> TierUsage:
    """What the consumers hold now (current replicas, surge included), per pool."""
    ledger = Ledger(tier.spec.gpu_budget)
    for c in consumers:
        held = gpus_held(c.current_replicas, c.gpus_per_replica, c.rolling)
        ledger.charge(_pool_or_product(tier.spec.gpu_budget, c), held)
    return ledger.usage()


@dataclass(frozen=True)
class Allocation:
    """The most replicas one ModelDeployment may run, and why not more."""

    max_replicas: int
    # True when it asked for more than it got.
    limited: bool
    # One of the REASON_* codes, usable as a condition reason.
    reason: str
    message: str
    # The gpuBudget entry charged; None when the tier has no budget for it.
    pool: str | None
    # GPUs the allocation holds, surge included when rolling.
    gpus: int
    # The product the consumer asked for: where an unbudgeted holding is counted.
    product: str | None = None
    # Whether a rollout's extra pod (maxSurge 1) fits now; True where no surge is
    # needed (already rolling, so charged above, or nothing to roll). When False
    # the controller should roll out with maxSurge 0 / maxUnavailable 1 instead.
    can_surge: bool = True


# The result of one request; the same shape as one entry of allowed_replicas.
Grant: TypeAlias = Allocation


def grant(usage: TierUsage, request: Consumer, *, admitted: bool = True) -> Grant:
    """How many replicas ``request`` may have, given ``usage``.

    ``usage`` must include what ``request`` holds now, as :func:`account` of the
    tier's consumers (request included) produces. This answers one request
    against a snapshot; two callers holding the same snapshot would both be
    told yes, so the controller uses :func:`allowed_replicas`, which applies
    this to every consumer of the tier in turn on one ledger.
    """
    pool = pool_for(usage.budget, request.product)
    if pool is None:
        return _decide(request, None, 0, admitted=admitted, terminating=False)
    charged = _pool_or_product(usage.budget, request)
    # Give back what the request holds now and charge only what it keeps.
    own_now = gpus_held(request.current_replicas, request.gpus_per_replica, request.rolling)
    own_kept = gpus_held(request.kept, request.gpus_per_replica, request.rolling)
    headroom = usage.headroom(charged) + own_now - own_kept
    return _decide(request, pool, headroom, admitted=admitted, terminating=False)


def allowed_replicas(
    tier: CapacityTier, consumers: Sequence[Consumer]
) -> dict[ConsumerKey, Allocation]:
    """Every consumer's allocation, in first-come-first-served order.

    Deterministic: the same tier and consumers give the same answer whatever
    their order in ``consumers``. Keys of the result iterate in that order.
    """
    keys = [c.key for c in consumers]
    if len(set(keys)) != len(keys):
        raise ValueError("consumers must be unique by namespace/name")
    budget = tier.spec.gpu_budget
    terminating = is_terminating(tier)
    ordered = sorted(consumers, key=order_key)
    ledger = Ledger(budget)

    # 1. What runs and is still wanted stays, whatever else happens.
    for c in ordered:
        ledger.charge(_pool_or_product(budget, c), gpus_held(c.kept, c.gpus_per_replica, c.rolling))

    # 2. Growth, first come first served, each seeing what the earlier ones left.
    result: dict[ConsumerKey, Allocation] = {}
    for c in ordered:
        pool = pool_for(budget, c.product)
        admitted = bool(namespace_allowed(tier, c.namespace, c.namespace_labels))
        headroom = ledger.headroom(pool) if pool is not None else 0
        allocation = _decide(c, pool, headroom, admitted=admitted, terminating=terminating)
        ledger.charge(
            _pool_or_product(budget, c),
            allocation.gpus - gpus_held(c.kept, c.gpus_per_replica, c.rolling),
        )
        result[c.key] = allocation

    # 3. Surge headroom, in the same order, on a scratch ledger: GPUs promised to
    #    one consumer's next rollout are not promised to another's, but they stay
    #    free for growth in later evaluations (rollouts are brief).
    surge = Ledger(budget)
    for pool, gpus in ledger.usage().granted.items():
        surge.charge(pool, gpus)
    for c in ordered:
        allocation = result[c.key]
        if c.rolling or allocation.max_replicas == 0 or allocation.pool is None:
            continue
        fits = surge.headroom(allocation.pool) >= MAX_SURGE * c.gpus_per_replica
        if fits:
            surge.charge(allocation.pool, MAX_SURGE * c.gpus_per_replica)
        result[c.key] = replace(allocation, can_surge=fits)
    return result


def held_by(tier: CapacityTier, consumer: Consumer) -> tuple[str, int]:
    """The pool a consumer is charged in and the GPUs it holds there now: its share
    of :func:`account`, which the operator's cache keeps summed per tier."""
    held = gpus_held(consumer.current_replicas, consumer.gpus_per_replica, consumer.rolling)
    return _pool_or_product(tier.spec.gpu_budget, consumer), held


def allocate(tier: CapacityTier, others: Mapping[str, int], request: Consumer) -> Allocation:
    """``request``'s allocation when every other consumer of the tier keeps what it
    holds, given those holdings summed per pool (``others``).

    This is :func:`allowed_replicas` for the one consumer being reconciled: the
    others ask for nothing new in that evaluation (each asks in its own), so their
    growth is zero and only their sum matters, which the cache keeps incrementally;
    the cost is independent of the tier's size. One difference: a surge is granted
    when the GPUs left after this grant fit one, without setting GPUs aside for
    other consumers' future rollouts; a rollout in progress already holds its surge
    (rule 5) and evaluations of a tier are serialized, so two surges are never
    granted the same GPUs.
    """
    budget = tier.spec.gpu_budget
    ledger = Ledger(budget)
    for charged, gpus in others.items():
        ledger.charge(charged, gpus)
    kept = gpus_held(request.kept, request.gpus_per_replica, request.rolling)
    ledger.charge(_pool_or_product(budget, request), kept)
    pool = pool_for(budget, request.product)
    admitted = bool(namespace_allowed(tier, request.namespace, request.namespace_labels))
    headroom = ledger.headroom(pool) if pool is not None else 0
    allocation = _decide(
        request, pool, headroom, admitted=admitted, terminating=is_terminating(tier)
    )
    if request.rolling or allocation.max_replicas == 0 or allocation.pool is None:
        return allocation
    left = headroom - (allocation.gpus - kept)
    return replace(allocation, can_surge=left >= MAX_SURGE * request.gpus_per_replica)


def usage_of(tier: CapacityTier, allocations: Mapping[ConsumerKey, Allocation]) -> TierUsage:
    """The ledger after an evaluation: GPUs granted per pool."""
    ledger = Ledger(tier.spec.gpu_budget)
    for a in allocations.values():
        # Unbudgeted holdings (kept, never revoked) count under their product,
        # as in account(), so an overcommit shows instead of vanishing.
        ledger.charge(a.pool or a.product or ANY_PRODUCT, a.gpus)
    return ledger.usage()


def is_terminating(tier: CapacityTier) -> bool:
    """A tier being deleted (held by its finalizer) lets no one grow."""
    extra = tier.metadata.model_extra or {}
    return bool(extra.get("deletionTimestamp"))


def _decide(
    c: Consumer, pool: str | None, headroom: int, *, admitted: bool, terminating: bool
) -> Allocation:
    """One consumer's allocation, given the GPUs left in its pool after every
    consumer's kept replicas (its own included) and the earlier consumers' growth."""
    g, rolling = c.gpus_per_replica, c.rolling
    kept = c.kept
    desired = c.desired_replicas

    def result(replicas: int, reason: str, message: str) -> Allocation:
        return Allocation(
            max_replicas=replicas,
            limited=replicas < desired,
            reason=reason,
            message=message,
            pool=pool,
            gpus=gpus_held(replicas, g, rolling),
            product=c.product,
        )

    if desired <= c.current_replicas:
        if desired < c.current_replicas:
            return result(desired, REASON_SCALING_DOWN, f"scaling down to {desired}")
        return result(desired, REASON_GRANTED, f"{desired} replicas granted")
    keeping = f"; keeping the {kept} running" if kept else ""
    if pool is None:
        wanted = f"product {c.product}" if c.product else "any product"
        return result(
            kept,
            REASON_NO_BUDGET,
            f"the tier has no gpuBudget entry for {wanted} (nor '{ANY_PRODUCT}'){keeping}",
        )
    if not admitted:
        return result(
            kept,
            REASON_NAMESPACE_NOT_ALLOWED,
            f"namespace {c.namespace} may not use this tier{keeping}",
        )
    if terminating:
        return result(kept, REASON_TIER_TERMINATING, f"the tier is being deleted{keeping}")

    available = gpus_held(kept, g, rolling) + headroom
    fits = min(desired, max(kept, replicas_within(available, g, rolling)))
    free_now = max(headroom, 0)
    if fits < c.floor and kept == 0:
        need = gpus_held(c.floor, g, rolling)
        return result(
            0,
            REASON_MIN_DOES_NOT_FIT,
            f"minReplicas {c.floor} needs {need} GPUs of pool '{pool}' but {free_now} are free; "
            "starting none rather than part of the minimum",
        )
    if fits < desired:
        left = max(available - gpus_held(fits, g, rolling), 0)
        return result(
            fits,
            REASON_BUDGET_EXHAUSTED,
            f"{fits} of {desired} replicas granted: pool '{pool}' has {left} GPUs left "
            f"and a replica needs {g}",
        )
    return result(fits, REASON_GRANTED, f"{fits} replicas granted")
