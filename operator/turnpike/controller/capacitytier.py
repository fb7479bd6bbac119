"""Reconcile one CapacityTier: its PriorityClass, its finalizer, its status."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from turnpike.api.capacitytier import CapacityTier
from turnpike.capacity import (
    TIER_FINALIZER,
    may_release,
    priority_class_needs_replacement,
    render_priority_class,
    tier_status,
)
from turnpike.capacity.consumers import in_use_by_pool
from turnpike.capacity.overcommit import PoolCommitment, commitments
from turnpike.controller.capacity import CapacityGate
from turnpike.controller.metering import GpuMeter
from turnpike.controller.metrics import Metrics
from turnpike.controller.nodewatch import NodeInventory
from turnpike.kube import KubeAPI
from turnpike.kube.resources import CAPACITY_TIER, PRIORITY_CLASS
from turnpike.reconcile.diff import merge_patch, needs_apply, with_hash

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class CapacityTierReconciler:
    kube: KubeAPI
    gate: CapacityGate
    metrics: Metrics
    resync_seconds: float = 60.0
    clock: Callable[[], datetime] = utcnow
    # GPU-hours of the last 24 h in status (None: not metered).
    meter: GpuMeter | None = None
    # The nodes' GPUs, for the Overcommitted condition (None: not watched).
    nodes: NodeInventory | None = None
    # A tier's status walks all its consumers, on the event loop every reconcile
    # shares; while a fleet scales, every grant asks for it again. Passes of one
    # tier are spaced at least this far apart, and further for big tiers, so that
    # they take at most 1/PASS_SHARE of the loop (5 % by default).
    min_interval_seconds: float = 1.0
    pass_share: float = 20.0
    _last_pass: dict[str, float] = field(default_factory=dict)
    _pass_cost: dict[str, float] = field(default_factory=dict)
    _priced: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)

    async def __call__(self, key: tuple[str, str]) -> float | None:
        return await self.metrics.measured("CapacityTier", lambda: self.reconcile(key[1]))

    async def reconcile(self, name: str) -> float | None:
        body = await self.kube.get(CAPACITY_TIER, None, name)
        if body is None:
            self._last_pass.pop(name, None)
            self._pass_cost.pop(name, None)
            for labels in self._priced.pop(name, set()):
                with contextlib.suppress(KeyError):
                    self.metrics.gpu_hour_price.remove(*labels)
            return None  # its PriorityClass goes with it (ownerReference)
        spacing = max(self.min_interval_seconds, self.pass_share * self._pass_cost.get(name, 0))
        since = time.monotonic() - self._last_pass.get(name, -math.inf)
        if since < spacing and not body["metadata"].get("deletionTimestamp"):
            return spacing - since  # the queue looks again then
        self._last_pass[name] = time.monotonic()
        return await self._pass(name, body)

    async def _pass(self, name: str, body: dict[str, Any]) -> float | None:
        self.gate.cache.tier_seen("MODIFIED", body)
        try:
            tier = CapacityTier.from_k8s(body)
        except ValidationError as error:
            log.warning("CapacityTier %s is invalid: %s", name, error)
            return self.resync_seconds
        self._export_prices(tier)
        began = time.process_time()
        consumers = self.gate.consumers_of(tier)
        walk = time.process_time() - began
        finalizers = list(body["metadata"].get("finalizers") or [])
        deleting = bool(body["metadata"].get("deletionTimestamp"))

        if not deleting and TIER_FINALIZER not in finalizers:
            body = await self._set_finalizers(body, [*finalizers, TIER_FINALIZER])
        if not deleting:
            await self._priority_class(tier, body)

        now = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        defaults = [t.name for t in self.gate.cache.parsed_tiers() if t.spec.default]
        started = time.process_time()  # the pure part only: no await in between
        status = tier_status(
            tier,
            consumers,
            in_use_by_pool(tier, consumers, self.gate.cache.deployments),
            now=now,
            default_tiers=defaults,
            commitments=self._commitments(tier),
        )
        self._pass_cost[name] = walk + time.process_time() - started
        if self.meter is not None:
            status = self.meter.tier_status(tier, status)
        if tier.status is None or status != tier.status:
            stored = body.get("status") or {}
            patch = merge_patch(stored, status.to_k8s())
            written = await self.kube.patch_status(CAPACITY_TIER, None, name, patch)
            # The finalizer patch below is guarded by resourceVersion: the status
            # write moved it, so that patch must name the version just written.
            if written:
                body = written

        if deleting and TIER_FINALIZER in finalizers:
            release, why = may_release(consumers)
            if release:
                await self._set_finalizers(body, [f for f in finalizers if f != TIER_FINALIZER])
                return None
            log.info("CapacityTier %s is held: %s", name, why)
        return self.resync_seconds

    def _commitments(self, tier: CapacityTier) -> dict[str, PoolCommitment] | None:
        """Every dedicated and reserved budget (this tier's as just read) against the
        nodes' GPUs; None until the nodes are known."""
        cluster = self.nodes.gpus() if self.nodes is not None else None
        if cluster is None:
            return None
        others = [t for t in self.gate.cache.parsed_tiers() if t.name != tier.name]
        return commitments([*others, tier], cluster)

    def _export_prices(self, tier: CapacityTier) -> None:
        """The tier's prices as a gauge, so dashboards can turn GPU-hours into cost."""
        gauge = self.metrics.gpu_hour_price
        name = tier.metadata.name
        currency = tier.spec.currency or ""
        prices = tier.spec.price_per_gpu_hour or {}
        for labels in list(self._priced.get(name, ())):
            if labels[1] not in prices or labels[2] != currency:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._priced[name] = set()
        for product, price in prices.items():
            gauge.labels(name, product, currency).set(float(price))
            self._priced[name].add((name, product, currency))

    async def _set_finalizers(self, body: dict[str, Any], finalizers: list[str]) -> dict[str, Any]:
        patch = {
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": body["metadata"]["resourceVersion"],
            }
        }
        return await self.kube.patch(CAPACITY_TIER, None, body["metadata"]["name"], patch)

    async def _priority_class(self, tier: CapacityTier, body: dict[str, Any]) -> None:
        wanted = render_priority_class(tier)
        wanted["metadata"]["ownerReferences"] = [
            {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "name": body["metadata"]["name"],
                "uid": body["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ]
        wanted = with_hash(wanted)
        live = await self.kube.get(PRIORITY_CLASS, None, wanted["metadata"]["name"])
        if live is not None and priority_class_needs_replacement(live, wanted):
            await self.kube.delete(PRIORITY_CLASS, None, wanted["metadata"]["name"])
            live = None
        if needs_apply(wanted, live):
            await self.kube.apply(wanted)
