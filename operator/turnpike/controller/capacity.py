"""The capacity gate: how many replicas a ModelDeployment may run in its tier.

Evaluations of one tier are serialized by a lock held until the caller has
recorded its grant in the cache's sums (see Cache.granting), so two deployments
racing for the last GPUs never both get them; the apply itself happens after
the lock is released. Inside the lock the
caller asks :attr:`Verdict.allocate` (pure, over one snapshot of the tier) for
any replica count: the autoscaler decides with it as its cap, so a scale-up the
tier refuses is never decided, recorded or reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from turnpike.api.capacitytier import CapacityTier
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.capacity import Allocation, Consumer, priority_class_name, resolve_tier
from turnpike.capacity import allocate as allocate_one
from turnpike.capacity.consumers import consumer, consumers_of
from turnpike.controller.cache import Cache
from turnpike.controller.metrics import Metrics
from turnpike.kube import KubeAPI
from turnpike.kube.resources import NAMESPACE
from turnpike.reconcile.plan import Placement
from turnpike.status.conditions import Problem


@dataclass(frozen=True)
class Verdict:
    """The tier in effect, or why none can be used, and how it answers requests.

    ``allocate(desired)`` is the tier's allocation for this ModelDeployment asking
    for ``desired`` replicas, or None when capacity accounting is off. It reads
    the snapshot taken under the tier's lock: call it only inside the block.
    """

    tier: CapacityTier | None
    problem: Problem | None
    allocate: Callable[[int], Allocation] | None = None

    def cap(self, desired: int) -> int | None:
        """The most replicas the tier grants for ``desired`` (the autoscaler's BudgetCap)."""
        return None if self.allocate is None else self.allocate(desired).max_replicas

    @property
    def placement(self) -> Placement | None:
        if self.tier is None:
            return None
        return Placement(
            tier=self.tier.name,
            priority_class=priority_class_name(self.tier.name),
            node_selector=dict(self.tier.spec.node_selector),
            tolerations=[t.to_k8s() for t in self.tier.spec.tolerations],
        )


def cached_models(cache: Cache) -> list[tuple[ModelDeployment, str, dict[str, Any] | None]]:
    """Every live, valid ModelDeployment with its creation time and Deployment: the
    whole fleet, for the tier reconciler's status (never on a reconcile's path)."""
    out = []
    for key, body in cache.models.items():
        if body["metadata"].get("deletionTimestamp"):
            continue
        md = cache.parsed_model(key)
        if md is None:
            continue
        out.append(
            (
                md,
                str(body["metadata"].get("creationTimestamp", "1970-01-01T00:00:00Z")),
                cache.deployments.get(key),
            )
        )
    return out


class CapacityGate:
    def __init__(
        self,
        kube: KubeAPI,
        cache: Cache,
        default_tier: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.metrics = metrics
        self._locks: dict[str, asyncio.Lock] = {}
        if default_tier != cache.default_tier:
            cache.default_tier = default_tier
            cache.reaccount_all()

    @property
    def default_tier(self) -> str | None:
        return self.cache.default_tier

    @contextlib.asynccontextmanager
    async def evaluate(self, body: dict[str, Any], md: ModelDeployment) -> AsyncIterator[Verdict]:
        """Yields the verdict while holding the tier's lock; apply inside the block.

        The cost does not depend on the fleet: the other consumers enter only as
        the GPUs per pool they hold, which the cache keeps summed per tier.
        """
        tiers = self.cache.parsed_tiers()
        if not tiers:
            yield Verdict(None, None)  # no tiers defined: accounting is off
            return
        resolution = resolve_tier(md.spec.tier or self.default_tier, tiers)
        tier = resolution.tier
        if tier is None:
            if md.spec.tier is None and resolution.reason == "NoDefaultTier":
                yield Verdict(None, None)
            else:
                yield Verdict(None, Problem(resolution.reason, resolution.message))
            return
        lock = self._locks.setdefault(tier.name, asyncio.Lock())
        async with lock:
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            labels = await self._namespace_labels(tier, key[0])
            spent = 0.0
            started = time.process_time()
            others = self.cache.accounts.held_by_others(tier.name, key)
            created = str(body["metadata"].get("creationTimestamp", "1970-01-01T00:00:00Z"))
            deployment = self.cache.deployments.get(key)
            spent += time.process_time() - started

            def allocate(desired: int) -> Allocation:
                nonlocal spent
                began = time.process_time()
                mine = consumer(md, created, deployment, desired, labels)
                result = allocate_one(tier, others, mine)
                spent += time.process_time() - began
                return result

            try:
                yield Verdict(tier, None, allocate)
            finally:
                if self.metrics is not None:
                    self.metrics.capacity_evaluation_seconds.labels(tier.name).observe(spent)

    def consumers_of(self, tier: CapacityTier) -> list[Consumer]:
        tiers = self.cache.parsed_tiers()
        return consumers_of(tier, tiers, cached_models(self.cache), self.default_tier)

    async def _namespace_labels(self, tier: CapacityTier, namespace: str) -> dict[str, str] | None:
        """The labels of the consumer's namespace, for tiers that select namespaces by
        label (only the consumer's own: the others ask for nothing new here)."""
        if tier.spec.namespace_selector is None:
            return None
        obj = await self.kube.get(NAMESPACE, None, namespace)
        return dict((obj or {}).get("metadata", {}).get("labels") or {})
