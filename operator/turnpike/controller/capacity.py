"""The capacity gate: how many replicas a ModelDeployment may run in its tier.

Evaluations of one tier are serialized by a lock held until the caller has
applied its Deployment and written the result through to the cache, so two
deployments racing for the last GPUs never both get them. Inside the lock the
caller asks :attr:`Verdict.allocate` (pure, over one snapshot of the tier) for
any replica count: the autoscaler decides with it as its cap, so a scale-up the
tier refuses is never decided, recorded or reported.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from turnpike.api.capacitytier import CapacityTier
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.capacity import Allocation, allowed_replicas, priority_class_name, resolve_tier
from turnpike.capacity.consumers import consumer, consumers_of
from turnpike.controller.cache import Cache
from turnpike.kube import Kube
from turnpike.kube.resources import NAMESPACE
from turnpike.status.conditions import Problem


@dataclass(frozen=True)
class Placement:
    """What the tier adds to the pods: priority and, for dedicated pools, where."""

    tier: str
    priority_class: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]


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


def parsed_tiers(cache: Cache) -> list[CapacityTier]:
    tiers = []
    for body in cache.tiers.values():
        try:
            tiers.append(CapacityTier.from_k8s(body))
        except ValidationError:
            continue  # admission refuses these; a stale one must not stop the others
    return tiers


def cached_models(cache: Cache) -> list[tuple[ModelDeployment, str, dict[str, Any] | None]]:
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
    def __init__(self, kube: Kube, cache: Cache, default_tier: str | None = None) -> None:
        self.kube = kube
        self.cache = cache
        self.default_tier = default_tier
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def evaluate(self, body: dict[str, Any], md: ModelDeployment) -> AsyncIterator[Verdict]:
        """Yields the verdict while holding the tier's lock; apply inside the block."""
        tiers = parsed_tiers(self.cache)
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
            labels = await self._namespace_labels(tier)
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            others = [
                c
                for c in consumers_of(
                    tier, tiers, cached_models(self.cache), self.default_tier, labels
                )
                if (c.namespace, c.name) != key
            ]
            created = str(body["metadata"].get("creationTimestamp", "1970-01-01T00:00:00Z"))
            deployment = self.cache.deployments.get(key)

            def allocate(desired: int) -> Allocation:
                mine = consumer(md, created, deployment, desired, labels.get(key[0]))
                return allowed_replicas(tier, [*others, mine])[mine.key]

            yield Verdict(tier, None, allocate)

    def consumers_of(self, tier: CapacityTier) -> list[Any]:
        tiers = parsed_tiers(self.cache)
        return consumers_of(tier, tiers, cached_models(self.cache), self.default_tier)

    async def _namespace_labels(self, tier: CapacityTier) -> dict[str, dict[str, str]]:
        """Labels only matter to tiers that select namespaces by label."""
        if tier.spec.namespace_selector is None:
            return {}
        labels: dict[str, dict[str, str]] = {}
        for namespace in {ns for ns, _ in self.cache.models}:
            obj = await self.kube.get(NAMESPACE, None, namespace)
            labels[namespace] = dict((obj or {}).get("metadata", {}).get("labels") or {})
        return labels
