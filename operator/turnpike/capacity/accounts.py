"""GPUs held per CapacityTier and pool, kept as running sums (kueue's cache habit).

A capacity evaluation needs what every other consumer of the tier holds. Summing
the tier's consumers at each evaluation costs O(fleet) per reconcile, so a few
hundred autoscaled deployments would saturate one tier's lock. Instead each
consumer's share is recorded when its ModelDeployment or Deployment changes, and
the sums move by the difference: an evaluation reads one dict, whatever the
fleet's size. No I/O; the operator's cache owns one and feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

Key = tuple[str, str]


class Share(NamedTuple):
    """What one consumer holds: its tier, the pool it is charged in, and GPUs."""

    tier: str
    pool: str
    gpus: int


@dataclass
class TierAccounts:
    _shares: dict[Key, Share] = field(default_factory=dict)
    _totals: dict[str, dict[str, int]] = field(default_factory=dict)

    def record(self, key: Key, share: Share | None) -> None:
        """``key`` now holds ``share`` (None: nothing, in no tier)."""
        old = self._shares.pop(key, None)
        if old is not None:
            self._add(old, -old.gpus)
        if share is not None:
            self._shares[key] = share
            self._add(share, share.gpus)

    def _add(self, share: Share, gpus: int) -> None:
        pools = self._totals.setdefault(share.tier, {})
        total = pools.get(share.pool, 0) + gpus
        if total:
            pools[share.pool] = total
        else:
            pools.pop(share.pool, None)
        if not pools:
            del self._totals[share.tier]

    def held(self, tier: str) -> dict[str, int]:
        """GPUs per pool held by all of the tier's consumers."""
        return dict(self._totals.get(tier, {}))

    def held_by_others(self, tier: str, key: Key) -> dict[str, int]:
        """GPUs per pool held by the tier's consumers other than ``key``."""
        totals = self.held(tier)
        own = self._shares.get(key)
        if own is not None and own.tier == tier:
            left = totals.get(own.pool, 0) - own.gpus
            if left:
                totals[own.pool] = left
            else:
                totals.pop(own.pool, None)
        return totals

    def share(self, key: Key) -> Share | None:
        return self._shares.get(key)
