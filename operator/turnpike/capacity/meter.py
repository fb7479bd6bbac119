"""The GPU meter: GPU-seconds granted and ready, and requests served (pure).

A provider bills GPU time. For each ModelDeployment the meter integrates over
time two counts of GPUs: those the operator granted it (replicas × GPUs per
replica) and those of its pods that are Ready. Both are step functions that
change only at events the operator sees (a reconcile grants replicas, the pod
watch shows a Ready transition), so between two events the integral grows by
count × duration. Each integral is a :class:`Level` (the count now, since
when, the integral before) in integer GPU-milliseconds: any sequence of events
sums exactly, never goes down, and a snapshot restored later continues to the
millisecond.

Counters are kept per series, (tier, product) for each deployment: one that
moves to another tier stops one series and starts (or resumes) another, so a
sum by tier charges each tier for its own time. Each tier also has an
:class:`HourlyLedger`, the GPU-milliseconds granted per product and clock hour
over the last 24 hours, from which its status shows GPU-hours, utilisation of
the budget and cost.

Restarts (:meth:`Meter.resume`): a deployment's stored totals (status.usage,
integrated up to ``as_of``) continue, and the gap [as_of, now] is filled from
what is still visible: the granted level (only the operator changes it, and it
writes the totals with every change) and, for ready GPUs, each pod ready now,
from the later of as_of and its Ready transition. Pods that came and went while
no operator ran are not visible and are missed; a tier's ledger fills its own
gap the same way from the granted levels. Requests have no such trace: those
completed between the last stored count and the first two scrapes of the new
operator are missed.

Nothing here does I/O or reads a clock: times are epoch milliseconds, passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

from turnpike.api.capacitytier import (
    CapacityTier,
    CapacityTierStatus,
    PoolUsage,
    ProductHours,
    TierUsageStatus,
    UsageBuckets,
)
from turnpike.api.status import (
    MAX_USAGE_SERIES,
    ModelDeploymentStatus,
    ModelDeploymentUsage,
    UsageSeries,
)
from turnpike.capacity.ledger import pool_for

Key = tuple[str, str]  # namespace, ModelDeployment name
ANY_PRODUCT = "*"
GPU_RESOURCE = "nvidia.com/gpu"
HOUR_MS = 3_600_000
WINDOW_HOURS = 24
LEDGER_ENCODING = 1
# Status carries the totals at most this often when nothing else changed: a write
# per deployment per interval, longer for big fleets (usage_flush_ms). What a restart
# loses of GPU time is not bounded by it (the gap is filled from what is still
# visible), only what pods that vanished meanwhile ran, and the requests served
# since the last write.
USAGE_FLUSH_MS = 30_000
# With many deployments the interval grows so that usage alone never writes more
# than this many statuses a second (5,000 deployments: every 250 s).
MAX_USAGE_WRITES_PER_S = 20


def usage_flush_ms(deployments: int) -> int:
    """How long usage waits between writes of its own, for a fleet of ``deployments``."""
    return max(USAGE_FLUSH_MS, deployments * 1000 // MAX_USAGE_WRITES_PER_S)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- time -------------------------------------------------------------------


def millis(seconds: float) -> int:
    """Epoch seconds (time.time()) as the meter's epoch milliseconds."""
    return round(seconds * 1000)


def millis_of(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def rfc3339_millis(ms: int) -> str:
    """``ms`` as RFC 3339 with milliseconds: the gap after a restart starts exactly here."""
    moment = EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_time(text: str | None) -> int | None:
    """An RFC 3339 time as epoch milliseconds; None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return millis_of(moment)


# --- integrals --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Level:
    """∫ count dt of a step function in count-milliseconds: the count now, since
    when it holds, and the integral up to then."""

    count: int = 0
    since: int = 0
    before: int = 0

    def at(self, now: int) -> int:
        """The integral up to ``now`` (a time before ``since`` adds nothing)."""
        return self.before + self.count * max(0, now - self.since)

    def moved(self, now: int, count: int) -> Level:
        """The level from ``now`` on. A ``now`` before ``since`` counts as ``since``, so
        a clock that steps back never takes time away and the integral never falls."""
        if count < 0:
            raise ValueError(f"a GPU count cannot be negative: {count}")
        at = max(now, self.since)
        return Level(count, at, self.at(at))


class Series(NamedTuple):
    """The labels a deployment's GPU time is counted under."""

    tier: str  # "" when no tier is in effect
    product: str  # spec.gpu.product, ANY_PRODUCT when unset


@dataclass(frozen=True, slots=True)
class Totals:
    """GPU-milliseconds granted and ready."""

    granted: int = 0
    ready: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.granted + other.granted, self.ready + other.ready)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One deployment's meter at ``as_of``: what status.usage stores."""

    as_of: int
    series: Mapping[Series, Totals]
    requests: int = 0
    # Series no longer listed (more than MAX_USAGE_SERIES): still in the totals.
    retired: Totals = Totals()

    @property
    def totals(self) -> Totals:
        total = self.retired
        for totals in self.series.values():
            total = total + totals
        return total


class SeriesRow(NamedTuple):
    """One exported series: the counters' labels and values (seconds)."""

    namespace: str
    name: str
    tier: str
    product: str
    granted_seconds: float
    ready_seconds: float


class RequestsRow(NamedTuple):
    namespace: str
    name: str
    requests: int


@dataclass(slots=True)
class _Metered:
    """One deployment: its current series as two levels, and every earlier series."""

    series: Series
    granted: Level
    ready: Level
    past: dict[Series, Totals]
    requests: int = 0
    retired: Totals = Totals()
    # Resumed before its pods were known: the ready gap from here is still to fill.
    ready_gap_from: int | None = None

    def current(self, now: int) -> Totals:
        return Totals(self.granted.at(now), self.ready.at(now))


# --- the tier's hourly ledger -----------------------------------------------


def window_start(now: int) -> int:
    """The first millisecond of "the last 24 h": the current clock hour and the 23
    before it (hourly buckets make the window 23 to 24 hours long)."""
    return (now // HOUR_MS - (WINDOW_HOURS - 1)) * HOUR_MS


@dataclass
class HourlyLedger:
    """GPU-milliseconds granted per product and clock hour (epoch hour), last 24 h."""

    since: int  # when metering of the tier began: what utilisation is measured over
    hours: dict[str, dict[int, int]] = field(default_factory=dict)
    # The as_of of the stored ledger this one continues (None: started afresh): each
    # deployment resumed later adds its granted GPUs from here on (see Meter.resume).
    restored_at: int | None = None

    def add(self, product: str, start: int, end: int, count: int, *, trim: bool = True) -> None:
        """count GPUs held over [start, end), split at hour boundaries (``trim``: then
        drop the hours that left the window; a caller adding many segments trims once)."""
        start = max(start, window_start(end))  # older hours are trimmed anyway
        if count <= 0 or end <= start:
            return
        buckets = self.hours.setdefault(product, {})
        while start < end:
            hour = start // HOUR_MS
            stop = min(end, (hour + 1) * HOUR_MS)
            buckets[hour] = buckets.get(hour, 0) + count * (stop - start)
            start = stop
        if trim:
            self.trim(end)

    def trim(self, now: int) -> None:
        first = window_start(now) // HOUR_MS
        for product in list(self.hours):
            kept = {h: ms for h, ms in self.hours[product].items() if h >= first}
            if kept:
                self.hours[product] = kept
            else:
                del self.hours[product]

    def copy(self) -> HourlyLedger:
        return HourlyLedger(
            self.since, {p: dict(h) for p, h in self.hours.items()}, self.restored_at
        )

    def used(self, now: int) -> dict[str, int]:
        """GPU-milliseconds per product over the last 24 h."""
        first = window_start(now) // HOUR_MS
        used = {
            p: sum(ms for h, ms in hours.items() if h >= first) for p, hours in self.hours.items()
        }
        return {p: ms for p, ms in sorted(used.items()) if ms}

    def covered(self, now: int) -> int:
        """Milliseconds of the window the ledger has measured."""
        return max(0, now - max(window_start(now), self.since))

    def encode(self, now: int) -> UsageBuckets:
        self.trim(now)
        return UsageBuckets(
            v=LEDGER_ENCODING,
            since=self.since,
            products=[
                ProductHours(product=product, hours=[[h, ms] for h, ms in sorted(hours.items())])
                for product, hours in sorted(self.hours.items())
            ],
        )

    @classmethod
    def decode(cls, buckets: UsageBuckets | None, as_of: int | None) -> HourlyLedger | None:
        """The stored ledger (continuing from ``as_of``), or None when unusable."""
        if buckets is None or buckets.v != LEDGER_ENCODING or as_of is None:
            return None
        hours: dict[str, dict[int, int]] = {}
        for product in buckets.products:
            for row in product.hours:
                if len(row) != 2 or row[1] < 0:
                    continue  # the operator's own status, but it can be edited
                hours.setdefault(product.product, {})[row[0]] = row[1]
        ledger = cls(min(buckets.since, as_of), hours, as_of)
        ledger.trim(as_of)
        return ledger


# --- the meter --------------------------------------------------------------


@dataclass
class Meter:
    """Every metered deployment, and every tier's hourly ledger. Mutable state, but
    deterministic: each method is told the time."""

    _metered: dict[Key, _Metered] = field(default_factory=dict)
    _ledgers: dict[str, HourlyLedger] = field(default_factory=dict)
    _by_tier: dict[str, set[Key]] = field(default_factory=dict)

    def __contains__(self, key: object) -> bool:
        return key in self._metered

    def series_of(self, key: Key) -> Series | None:
        metered = self._metered.get(key)
        return metered.series if metered is not None else None

    def start(self, key: Key, series: Series, now: int, *, granted: int, ready: int) -> None:
        """Meter a deployment from ``now`` on, with nothing counted before."""
        self._track(key, _Metered(series, Level(granted, now), Level(ready, now), {}), now)

    def resume(
        self,
        key: Key,
        series: Series,
        stored: Snapshot,
        now: int,
        *,
        granted: int,
        ready_pods: Sequence[tuple[int | None, int]] | None,
    ) -> None:
        """Continue from ``stored`` and fill the gap [stored.as_of, now].

        ``granted`` is the level granted at as_of and still now (only the operator
        changes it). ``ready_pods`` holds (Ready since, in epoch ms or None when
        unknown, GPUs) of each pod ready now: each counts from the later of as_of
        and its transition, an unknown one from as_of. None: the pods are not known
        yet; :meth:`settle_ready` fills the ready gap once they are.
        """
        gap_from = min(stored.as_of, now)
        past = dict(stored.series)
        mine = past.pop(series, Totals())
        self._track(
            key,
            _Metered(
                series,
                Level(granted, now, mine.granted + granted * (now - gap_from)),
                Level(0, now, mine.ready),
                past,
                stored.requests,
                stored.retired,
                ready_gap_from=gap_from,
            ),
            now,
        )
        if ready_pods is not None:
            self.settle_ready(key, ready_pods, now)
        ledger = self._ledger(series.tier, now)
        if ledger.restored_at is not None:
            ledger.add(series.product, ledger.restored_at, now, granted)
        self._retire(self._metered[key])

    def pending(self, key: Key) -> bool:
        """Whether a resumed deployment still waits for its pods to fill the ready gap."""
        metered = self._metered.get(key)
        return metered is not None and metered.ready_gap_from is not None

    def settle_ready(
        self, key: Key, ready_pods: Sequence[tuple[int | None, int]], now: int
    ) -> None:
        """The pods are known: the ready gap since the stored as_of (see :meth:`resume`)
        and the ready level from now on."""
        metered = self._metered.get(key)
        if metered is None:
            return
        gap_from = metered.ready_gap_from
        if gap_from is None:
            self.set_ready(key, sum(gpus for _, gpus in ready_pods), now)
            return
        at = max(now, metered.ready.since)
        gap = sum(
            gpus * (at - max(gap_from, since if since is not None else gap_from))
            for since, gpus in ready_pods
            if since is None or since < at
        )
        ready_now = sum(gpus for _, gpus in ready_pods)
        metered.ready = Level(ready_now, at, metered.ready.at(at) + gap)
        metered.ready_gap_from = None

    def set_granted(self, key: Key, gpus: int, now: int) -> None:
        metered = self._metered.get(key)
        if metered is None or metered.granted.count == gpus:
            return
        self._close_granted(metered, now)
        metered.granted = metered.granted.moved(now, gpus)

    def set_ready(self, key: Key, gpus: int, now: int) -> None:
        metered = self._metered.get(key)
        if metered is not None and metered.ready_gap_from is None and metered.ready.count != gpus:
            metered.ready = metered.ready.moved(now, gpus)

    def add_requests(self, key: Key, requests: int) -> None:
        metered = self._metered.get(key)
        if metered is not None and requests > 0:
            metered.requests += requests

    def relabel(self, key: Key, series: Series, now: int) -> None:
        """From ``now`` on count under ``series`` (the tier or the product changed)."""
        metered = self._metered.get(key)
        if metered is None or metered.series == series:
            return
        self._close_granted(metered, now)
        at = max(now, metered.granted.since, metered.ready.since)
        metered.past[metered.series] = metered.current(at)
        resumed = metered.past.pop(series, Totals())
        self._untrack_tier(key, metered.series.tier)
        metered.series = series
        metered.granted = Level(metered.granted.count, at, resumed.granted)
        metered.ready = Level(metered.ready.count, at, resumed.ready)
        self._by_tier.setdefault(series.tier, set()).add(key)
        self._ledger(series.tier, now)
        self._retire(metered)

    def forget(self, key: Key, now: int) -> None:
        """The deployment is gone: its granted time up to now stays in its tier's ledger."""
        metered = self._metered.pop(key, None)
        if metered is not None:
            self._close_granted(metered, now)
            self._untrack_tier(key, metered.series.tier)

    def snapshot(self, key: Key, now: int) -> Snapshot | None:
        metered = self._metered.get(key)
        if metered is None:
            return None
        at = max(now, metered.granted.since, metered.ready.since)
        series = {**metered.past, metered.series: metered.current(at)}
        return Snapshot(at, series, metered.requests, metered.retired)

    def series_rows(self, now: int) -> Iterator[SeriesRow]:
        """Every series' totals up to ``now``, for the exported counters."""
        for (namespace, name), metered in self._metered.items():
            for series, totals in {**metered.past, metered.series: metered.current(now)}.items():
                yield SeriesRow(
                    namespace,
                    name,
                    series.tier,
                    series.product,
                    totals.granted / 1000,
                    totals.ready / 1000,
                )

    def request_rows(self) -> Iterator[RequestsRow]:
        for (namespace, name), metered in self._metered.items():
            yield RequestsRow(namespace, name, metered.requests)

    def seed_ledger(self, tier: str, ledger: HourlyLedger) -> None:
        """A tier's stored ledger, before any of its deployments resumes."""
        self._ledgers[tier] = ledger

    def ledger_view(self, tier: str, now: int) -> HourlyLedger:
        """The tier's ledger up to ``now``: closed segments and every open one."""
        view = self._ledger(tier, now).copy()
        for key in self._by_tier.get(tier, ()):
            metered = self._metered[key]
            granted = metered.granted
            view.add(metered.series.product, granted.since, now, granted.count, trim=False)
        view.trim(now)
        return view

    def _track(self, key: Key, metered: _Metered, now: int) -> None:
        previous = self._metered.get(key)
        if previous is not None:
            self.forget(key, now)
        self._metered[key] = metered
        self._by_tier.setdefault(metered.series.tier, set()).add(key)
        self._ledger(metered.series.tier, now)

    def _untrack_tier(self, key: Key, tier: str) -> None:
        members = self._by_tier.get(tier)
        if members is not None:
            members.discard(key)
            if not members:
                del self._by_tier[tier]

    def _ledger(self, tier: str, now: int) -> HourlyLedger:
        ledger = self._ledgers.get(tier)
        if ledger is None:
            ledger = self._ledgers[tier] = HourlyLedger(now)
        return ledger

    def _close_granted(self, metered: _Metered, now: int) -> None:
        """The granted segment so far goes into the tier's ledger; it restarts at now."""
        level = metered.granted
        end = max(now, level.since)
        self._ledger(metered.series.tier, now).add(
            metered.series.product, level.since, end, level.count
        )
        metered.granted = Level(level.count, end, level.at(end))

    @staticmethod
    def _retire(metered: _Metered) -> None:
        """Keep at most MAX_USAGE_SERIES series; the oldest others stay in the totals."""
        while len(metered.past) > MAX_USAGE_SERIES - 1:
            oldest = next(iter(metered.past))
            metered.retired = metered.retired + metered.past.pop(oldest)


# --- pods -------------------------------------------------------------------


def pod_ready_since(pod: Mapping[str, Any]) -> tuple[bool, int | None]:
    """Whether a pod counts as ready (Ready=True and not terminating), and since when
    (its Ready condition's lastTransitionTime; None when not given)."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False, None
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            return ready, parse_time(condition.get("lastTransitionTime")) if ready else None
    return False, None


def pod_gpus(pod: Mapping[str, Any], default: int) -> int:
    """GPUs a pod's containers hold (their nvidia.com/gpu limits), or ``default``
    when the pod's spec is not at hand."""
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return default
    total = 0
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(GPU_RESOURCE) or (
            resources.get("requests") or {}
        ).get(GPU_RESOURCE)
        try:
            total += max(0, int(value or 0))
        except (TypeError, ValueError):
            continue  # not a count of devices; the API server refuses those anyway
    return total


def ready_pods(
    pods: Iterable[Mapping[str, Any]], gpus_per_pod: int
) -> list[tuple[int | None, int]]:
    """(Ready since, GPUs) of each ready pod."""
    out = []
    for pod in pods:
        ready, since = pod_ready_since(pod)
        if ready:
            out.append((since, pod_gpus(pod, gpus_per_pod)))
    return out


# --- status -----------------------------------------------------------------


def usage_status(snapshot: Snapshot) -> ModelDeploymentUsage:
    """status.usage: seconds with millisecond decimals, which read back exactly."""
    totals = snapshot.totals
    return ModelDeploymentUsage(
        gpu_seconds_granted=totals.granted / 1000,
        gpu_seconds_ready=totals.ready / 1000,
        requests_served=snapshot.requests,
        as_of=rfc3339_millis(snapshot.as_of),
        series=[
            UsageSeries(
                tier=s.tier,
                product=s.product,
                gpu_seconds_granted=t.granted / 1000,
                gpu_seconds_ready=t.ready / 1000,
            )
            for s, t in snapshot.series.items()
        ],
    )


def snapshot_of(usage: ModelDeploymentUsage | None) -> Snapshot | None:
    """The stored usage as a Snapshot; None when there is none or its time is unreadable."""
    if usage is None:
        return None
    as_of = parse_time(usage.as_of)
    if as_of is None:
        return None
    series: dict[Series, Totals] = {}
    for row in usage.series:
        key = Series(row.tier, row.product)
        series[key] = series.get(key, Totals()) + Totals(
            millis(row.gpu_seconds_granted), millis(row.gpu_seconds_ready)
        )
    listed = Totals()
    for totals in series.values():
        listed = listed + totals
    retired = Totals(
        max(0, millis(usage.gpu_seconds_granted) - listed.granted),
        max(0, millis(usage.gpu_seconds_ready) - listed.ready),
    )
    return Snapshot(as_of, series, usage.requests_served, retired)


def with_usage(
    previous: ModelDeploymentStatus,
    status: ModelDeploymentStatus,
    usage: ModelDeploymentUsage | None,
    flush_ms: int = USAGE_FLUSH_MS,
) -> ModelDeploymentStatus:
    """The status to write, with fresh usage when it is written anyway, when none is
    stored yet, or when the stored one is ``flush_ms`` old and has moved; otherwise
    the stored usage, so a reconcile that changes nothing else writes nothing."""
    if usage is None:
        return status
    kept = status.model_copy(update={"usage": previous.usage})
    if kept != previous or _due(previous.usage, usage, flush_ms):
        return status.model_copy(update={"usage": usage})
    return kept


def _due(stored: ModelDeploymentUsage | None, fresh: ModelDeploymentUsage, flush_ms: int) -> bool:
    if stored is None:
        return True
    stored_at, fresh_at = parse_time(stored.as_of), parse_time(fresh.as_of)
    if stored_at is None or fresh_at is None:
        return True
    moved = (stored.gpu_seconds_granted, stored.gpu_seconds_ready, stored.requests_served) != (
        fresh.gpu_seconds_granted,
        fresh.gpu_seconds_ready,
        fresh.requests_served,
    )
    return moved and fresh_at - stored_at >= flush_ms


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def tier_usage_status(tier: CapacityTier, ledger: HourlyLedger, now: int) -> TierUsageStatus:
    """GPU-hours per gpuBudget entry over the last 24 h, utilisation of the budget over
    the hours covered, and cost at the tier's prices (a product's own price, else '*')."""
    budget = tier.spec.gpu_budget
    prices = tier.spec.price_per_gpu_hour or {}
    covered = ledger.covered(now)
    by_pool: dict[str, dict[str, int]] = {pool: {} for pool in budget}
    for product, ms in ledger.used(now).items():
        pool = pool_for(budget, None if product == ANY_PRODUCT else product) or product
        by_pool.setdefault(pool, {})[product] = ms
    rows = []
    total_cost: Decimal | None = Decimal(0) if prices else None
    for pool, products in sorted(by_pool.items()):
        used = sum(products.values())
        possible = budget.get(pool, 0) * covered
        cost: Decimal | None = None
        if prices:
            priced = [(ms, prices.get(p, prices.get(ANY_PRODUCT))) for p, ms in products.items()]
            if all(price is not None for _, price in priced):
                cost = sum(
                    (Decimal(ms) / HOUR_MS * Decimal(str(price)) for ms, price in priced),
                    Decimal(0),
                )
        if total_cost is not None:
            total_cost = total_cost + cost if cost is not None else None
        rows.append(
            PoolUsage(
                pool=pool,
                gpu_hours=round(used / HOUR_MS, 3),
                budget_gpu_hours=round(possible / HOUR_MS, 3),
                utilization_percent=round(100 * used / possible, 1) if possible else None,
                cost=_money(cost) if cost is not None else None,
            )
        )
    summary = ", ".join(
        f"{r.pool}={r.gpu_hours:g}h"
        + (f" ({r.utilization_percent:g}%)" if r.utilization_percent is not None else "")
        for r in rows
    )
    if total_cost is not None:
        summary += (
            f"; cost {_money(total_cost)}{' ' + tier.spec.currency if tier.spec.currency else ''}"
        )
    return TierUsageStatus(
        as_of=rfc3339_millis(now),
        window_hours=round(covered / HOUR_MS, 3),
        pools=rows,
        cost=_money(total_cost) if total_cost is not None else None,
        currency=tier.spec.currency,
        summary=summary[:1024] or None,
        buckets=ledger.encode(now),
    )


def with_tier_usage(
    previous: CapacityTierStatus | None,
    status: CapacityTierStatus,
    usage: TierUsageStatus,
    flush_ms: int = USAGE_FLUSH_MS,
) -> CapacityTierStatus:
    """The tier's status with fresh usage when it is written anyway, when none is
    stored, or when the stored one is ``flush_ms`` old and differs."""
    stored = previous.usage if previous is not None else None
    kept = status.model_copy(update={"usage": stored})
    if previous is None or kept != previous or stored is None:
        return status.model_copy(update={"usage": usage})
    stored_at, fresh_at = parse_time(stored.as_of), parse_time(usage.as_of)
    stale = stored_at is None or fresh_at is None or fresh_at - stored_at >= flush_ms
    moved = stored.model_copy(update={"as_of": usage.as_of}) != usage
    return status.model_copy(update={"usage": usage}) if stale and moved else kept


def restored_ledger(raw_status: Mapping[str, Any] | None) -> HourlyLedger | None:
    """A tier's stored ledger from its raw status; None when absent or unreadable."""
    raw = (raw_status or {}).get("usage")
    if not isinstance(raw, Mapping):
        return None
    try:
        usage = TierUsageStatus.model_validate(raw)
    except ValueError:
        return None
    return HourlyLedger.decode(usage.buckets, parse_time(usage.as_of))
