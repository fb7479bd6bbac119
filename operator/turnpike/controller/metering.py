"""The GPU meter's shell: feeds the pure meter (turnpike.capacity.meter) from the
operator's events and reads it back for /metrics and status.

Where each count comes from:

- granted GPUs: the replicas each reconcile grants × GPUs per replica, set when
  the plan is made (:meth:`GpuMeter.granted`);
- ready GPUs: the pod watch. The cache tells :meth:`GpuMeter.pods_changed` of
  every change of a group's pods as it arrives, so a Ready transition is counted
  at the moment the operator sees it, not at the next reconcile or tick;
- requests served: the completed-request deltas of the autoscaler's scrapes
  (Observation.deltas, counter resets handled there).

A deployment is metered from its first reconcile in this process: it resumes
from status.usage when there is one (the gap since is filled from the granted
level and the pods ready now, see Meter.resume), which needs the pod cache
synced first; until then its stored usage is left as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from turnpike.api.capacitytier import CapacityTier, CapacityTierStatus
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.api.status import ModelDeploymentStatus, ModelDeploymentUsage
from turnpike.autoscale.signal import Observation
from turnpike.capacity.meter import (
    ANY_PRODUCT,
    Meter,
    Series,
    millis,
    ready_pods,
    restored_ledger,
    snapshot_of,
    tier_usage_status,
    usage_flush_ms,
    usage_status,
    with_tier_usage,
)
from turnpike.controller.cache import Cache
from turnpike.controller.metrics import UsageReading
from turnpike.render.names import label_value

Key = tuple[str, str]


@dataclass
class GpuMeter:
    cache: Cache | None = None
    clock: Callable[[], float] = time.time
    meter: Meter = field(default_factory=Meter)
    # The pod group (namespace, selector label) of each metered deployment.
    _groups: dict[Key, Key] = field(default_factory=dict)
    _gpus_per_replica: dict[Key, int] = field(default_factory=dict)
    # Resumed before the pod cache was synced: their ready gap is still to fill.
    _pending: set[Key] = field(default_factory=set)

    def attach(self) -> None:
        """Listen to the cache, and take over every tier's stored hourly ledger; call
        after the cache is primed and before any reconcile or pod event."""
        if self.cache is None:
            return
        self.cache.on_pods_changed = self.pods_changed
        self.cache.on_model_deleted = self.forget
        for name, body in self.cache.tiers.items():
            ledger = restored_ledger(body.get("status"))
            if ledger is not None:
                self.meter.seed_ledger(name, ledger)

    def _now(self) -> int:
        return millis(self.clock())

    def observe(
        self,
        key: Key,
        md: ModelDeployment,
        previous: ModelDeploymentStatus,
        tier: str | None,
    ) -> ModelDeploymentUsage | None:
        """The deployment's usage up to now (None: not to be written yet, keep what
        status has).

        Its first call in this process starts metering: from status.usage when stored
        (the ready part of the gap waits for the pod cache, see :meth:`pods_changed`),
        else from nothing. Later calls follow a change of tier or product.
        """
        now = self._now()
        per_replica = md.spec.gpu.per_replica
        series = Series(tier or "", md.spec.gpu.product or ANY_PRODUCT)
        self._gpus_per_replica[key] = per_replica
        synced = self.cache is None or self.cache.pods_synced
        if key not in self.meter:
            pods = self.cache.pods_of(*key) if self.cache is not None and synced else []
            ready = ready_pods(pods, per_replica)
            # What the operator granted before this reconcile decides anew.
            granted = (previous.desired_replicas or 0) * per_replica
            stored = snapshot_of(previous.usage)
            if stored is not None:
                self.meter.resume(
                    key, series, stored, now, granted=granted, ready_pods=ready if synced else None
                )
                if not synced:
                    self._pending.add(key)
            else:
                self.meter.start(key, series, now, granted=granted, ready=sum(g for _, g in ready))
            self._groups[(key[0], label_value(key[1]))] = key
        else:
            self.meter.relabel(key, series, now)
            if synced and self.meter.pending(key):
                self._settle(key, now)
        if self.meter.pending(key):
            return None  # its ready total still lacks the gap: writing it would lose that
        snapshot = self.meter.snapshot(key, now)
        return usage_status(snapshot) if snapshot is not None else None

    @property
    def flush_ms(self) -> int:
        """How long usage waits between writes of its own (longer for big fleets)."""
        return usage_flush_ms(len(self._gpus_per_replica))

    def granted(self, key: Key, gpus: int) -> None:
        """The reconcile granted ``gpus`` (replicas × GPUs per replica) from now on."""
        self.meter.set_granted(key, gpus, self._now())

    def served(self, key: Key, observation: Observation | None) -> None:
        """Requests completed between this scrape and the one before, on every pod
        that answered both (Observation.deltas; a restarted Triton counts from zero)."""
        if observation is None:
            return
        completed = sum(delta.completed for delta in observation.deltas.values())
        self.meter.add_requests(key, round(completed))

    def pods_changed(self, group: Key) -> None:
        """The watch changed a pod of ``group``: recount the deployment's ready GPUs.
        Until every scope's first LIST has landed the view is partial and waits."""
        if self.cache is None or not self.cache.pods_synced:
            return
        now = self._now()
        for pending in sorted(self._pending):
            self._settle(pending, now)  # the first full view of the pods after a resume
        metered = self._groups.get(group)
        if metered is not None and metered in self.meter:
            self._settle(metered, now)

    def _settle(self, key: Key, now: int) -> None:
        assert self.cache is not None
        self._pending.discard(key)
        pods = self.cache.pods_of(*key)
        self.meter.settle_ready(key, ready_pods(pods, self._gpus_per_replica.get(key, 0)), now)

    def forget(self, key: Key) -> None:
        """The ModelDeployment is gone: its series stop (and leave /metrics)."""
        self.meter.forget(key, self._now())
        self._groups.pop((key[0], label_value(key[1])), None)
        self._gpus_per_replica.pop(key, None)
        self._pending.discard(key)

    def reading(self) -> UsageReading:
        """Every series and request count up to now, for the exported counters."""
        now = self._now()
        return UsageReading(list(self.meter.series_rows(now)), list(self.meter.request_rows()))

    def tier_status(self, tier: CapacityTier, status: CapacityTierStatus) -> CapacityTierStatus:
        """``status`` with the tier's last 24 h of GPU-hours (when due to be written)."""
        now = self._now()
        usage = tier_usage_status(tier, self.meter.ledger_view(tier.name, now), now)
        return with_tier_usage(tier.status, status, usage)
