"""Leader election on a coordination.k8s.io Lease: one active replica at a time.

Several operator replicas may run (rolling upgrades, availability); only the
holder of the Lease reconciles. A replica that cannot renew before the lease
expires stops itself, so two leaders never act at once for longer than one
renew deadline. On a clean shutdown the lease is released, so a standby takes
over at once instead of after the lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from turnpike.kube import ApiError, KubeAPI
from turnpike.kube.resources import LEASE

log = logging.getLogger(__name__)
MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    for fmt in (MICRO, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(stamp, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def may_take(lease: dict[str, Any] | None, identity: str, now: datetime) -> bool:
    """Whether identity may write itself into the lease now (pure)."""
    if lease is None:
        return True
    spec = lease.get("spec", {})
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    duration = int(spec.get("leaseDurationSeconds") or 0)
    return renewed is None or renewed + timedelta(seconds=duration) < now


def held_lease(
    name: str,
    namespace: str,
    identity: str,
    duration: int,
    now: datetime,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    spec = dict((previous or {}).get("spec", {}))
    stamp = now.strftime(MICRO)
    if spec.get("holderIdentity") != identity:
        spec["acquireTime"] = stamp
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if previous else 0)
    spec.update(holderIdentity=identity, leaseDurationSeconds=duration, renewTime=stamp)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if previous is not None:
        metadata["resourceVersion"] = previous["metadata"]["resourceVersion"]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": spec,
    }


@dataclass
class LeaderElector:
    kube: KubeAPI
    name: str
    namespace: str
    identity: str
    lease_seconds: int = 15
    renew_seconds: float = 5.0
    retry_seconds: float = 2.0
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def _try(self) -> bool:
        lease = await self.kube.get(LEASE, self.namespace, self.name)
        now = self.clock()
        if not may_take(lease, self.identity, now):
            return False
        wanted = held_lease(
            self.name, self.namespace, self.identity, self.lease_seconds, now, lease
        )
        try:
            if lease is None:
                await self.kube.create(wanted)
            else:
                await self.kube.replace(wanted)
        except ApiError as error:
            if error.conflict:
                return False  # another replica wrote first
            raise
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Block until leader (True) or stop is set (False)."""
        announced = False
        while not stop.is_set():
            try:
                if await self._try():
                    log.info("became leader (lease %s/%s)", self.namespace, self.name)
                    return True
            except (ApiError, OSError) as error:
                log.warning("leader election: %s", error)
            if not announced:
                log.info("waiting for the leader lease %s/%s", self.namespace, self.name)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_seconds)
        return False

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew until stop is set; returns early (leadership lost) if renewing fails too long."""
        last_renewed = self.clock()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.renew_seconds)
                return
            except TimeoutError:
                pass
            try:
                # A renewal that hangs (a partitioned API server) must not keep a
                # replica believing it leads past the point where it must step down.
                left = self.lease_seconds * 2 / 3 - (self.clock() - last_renewed).total_seconds()
                if await asyncio.wait_for(self._try(), max(left, 0.1)):
                    last_renewed = self.clock()
                    continue
                log.error("another replica took the leader lease")
                return
            except (ApiError, OSError, TimeoutError) as error:
                log.warning("could not renew the leader lease: %s", error or "timed out")
            if (self.clock() - last_renewed).total_seconds() > self.lease_seconds * 2 / 3:
                log.error("could not renew the leader lease in time; stepping down")
                return

    async def release(self) -> None:
        try:
            lease = await self.kube.get(LEASE, self.namespace, self.name)
            if lease and lease.get("spec", {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["leaseDurationSeconds"] = 1
                await self.kube.replace(lease)
        except (ApiError, OSError) as error:
            log.warning("could not release the leader lease: %s", error)
