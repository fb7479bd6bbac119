"""The GPU meter's pure core (turnpike.capacity.meter): exact integrals of GPU
counts over time, their round trip through status, the tiers' hourly ledgers,
and when status carries the totals."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.builders import tier as tier_builder
from turnpike.api.capacitytier import CapacityTier, CapacityTierStatus, UsageBuckets
from turnpike.api.status import MAX_USAGE_SERIES, ModelDeploymentStatus, ModelDeploymentUsage
from turnpike.capacity.meter import (
    HOUR_MS,
    HourlyLedger,
    Level,
    Meter,
    Series,
    Snapshot,
    Totals,
    parse_time,
    pod_gpus,
    pod_ready_since,
    rfc3339_millis,
    snapshot_of,
    tier_usage_status,
    usage_status,
    window_start,
    with_tier_usage,
    with_usage,
)
from turnpike.controller.cache import trimmed_pod

T0 = 1_800_000_000_000  # epoch ms, a whole hour
KEY = ("team-a", "llama")
SERIES = Series("gold", "NVIDIA-L4")
L4 = "NVIDIA-L4"


# --- integrals ------------------------------------------------------------------


steps = st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 64)), max_size=40)


@given(steps)
def test_the_integral_is_the_sum_of_each_segments_count_times_its_length(
    events: list[tuple[int, int]],
) -> None:
    level, now, expected, count = Level(0, T0), T0, 0, 0
    for dt, gpus in events:
        expected += count * dt
        now += dt
        level, count = level.moved(now, gpus), gpus
        assert level.at(now) == expected


@given(st.lists(st.tuples(st.integers(-(10**6), 10**7), st.integers(0, 64)), max_size=40))
def test_the_integral_never_falls_whatever_the_clock_does(events: list[tuple[int, int]]) -> None:
    """A clock that steps back adds nothing; it never takes GPU time away."""
    level, now, last = Level(3, T0), T0, 0
    for dt, gpus in events:
        now += dt
        level = level.moved(now, gpus)
        assert level.at(now) >= last >= 0
        last = level.at(now)


def test_a_negative_count_is_refused() -> None:
    try:
        Level().moved(T0, -1)
    except ValueError:
        return
    raise AssertionError("a negative GPU count was accepted")


# --- the meter, its snapshots and restarts ---------------------------------------------


KEYS = [("team-a", "llama"), ("team-b", "mistral")]
SERIESES = [Series("gold", L4), Series("gold", "*"), Series("spot", L4), Series("", "*")]
actions = st.tuples(
    st.integers(0, 3 * HOUR_MS),  # time since the action before
    st.sampled_from(KEYS),
    st.sampled_from(["granted", "ready", "relabel", "requests"]),
    st.integers(0, 16),
    st.sampled_from(SERIESES),
)


def apply(meter: Meter, now: int, key: tuple[str, str], kind: str, n: int, s: Series) -> None:
    if kind == "granted":
        meter.set_granted(key, n, now)
    elif kind == "ready":
        meter.set_ready(key, n, now)
    elif kind == "relabel":
        meter.relabel(key, s, now)
    else:
        meter.add_requests(key, n)


def through_status(snapshot: Snapshot) -> Snapshot:
    """status.usage as the API server stores it and the next operator reads it."""
    raw = usage_status(snapshot).to_k8s()
    restored = snapshot_of(ModelDeploymentUsage.model_validate(raw))
    assert restored is not None
    return restored


def tier_ledger_through_status(ledger: HourlyLedger, now: int) -> HourlyLedger:
    raw = ledger.encode(now).to_k8s()
    restored = HourlyLedger.decode(UsageBuckets.model_validate(raw), now)
    assert restored is not None
    return restored


def levels(meter: Meter, key: tuple[str, str]) -> tuple[int, int]:
    metered = meter._metered[key]
    return metered.granted.count, metered.ready.count


@given(st.lists(actions, max_size=30), st.lists(actions, max_size=30))
def test_restoring_from_status_then_continuing_equals_never_restarting(
    before: list[Any], after: list[Any]
) -> None:
    steady = Meter()
    now = T0
    for key in KEYS:
        steady.start(key, SERIESES[0], now, granted=1, ready=0)
    for dt, *action in before:
        now += dt
        apply(steady, now, *action)

    # The restart: everything goes through status; the pods ready now say nothing
    # new (their Ready transition is before as_of, and the gap is empty).
    restarted = Meter()
    for tier in {s.tier for s in SERIESES}:
        restarted.seed_ledger(tier, tier_ledger_through_status(steady.ledger_view(tier, now), now))
    for key in KEYS:
        snapshot = steady.snapshot(key, now)
        assert snapshot is not None
        granted, ready = levels(steady, key)
        series = steady.series_of(key)
        assert series is not None
        restarted.resume(
            key,
            series,
            through_status(snapshot),
            now,
            granted=granted,
            ready_pods=[(now - 1000, ready)],
        )

    for dt, *action in after:
        now += dt
        apply(steady, now, *action)
        apply(restarted, now, *action)
    assert sorted(restarted.series_rows(now)) == sorted(steady.series_rows(now))
    assert sorted(restarted.request_rows()) == sorted(steady.request_rows())
    for tier in {s.tier for s in SERIESES}:
        assert restarted.ledger_view(tier, now).hours == steady.ledger_view(tier, now).hours


@given(st.lists(actions, max_size=40))
def test_the_totals_are_the_sum_of_the_series_and_never_fall(events: list[Any]) -> None:
    meter = Meter()
    now = T0
    for key in KEYS:
        meter.start(key, SERIESES[0], now, granted=2, ready=1)
    last: dict[Any, float] = {}
    for dt, *action in events:
        now += dt
        apply(meter, now, *action)
        for row in meter.series_rows(now):
            labels = row[:4]
            assert row.granted_seconds >= last.get((labels, "g"), 0) >= 0
            assert row.ready_seconds >= last.get((labels, "r"), 0) >= 0
            last[(labels, "g")], last[(labels, "r")] = row.granted_seconds, row.ready_seconds
        for key in KEYS:
            snapshot = meter.snapshot(key, now)
            assert snapshot is not None
            rows = [r for r in meter.series_rows(now) if (r.namespace, r.name) == key]
            assert snapshot.totals.granted == round(sum(r.granted_seconds for r in rows) * 1000)


@given(
    st.lists(actions, max_size=20),
    st.integers(0, 5 * HOUR_MS),
    st.lists(st.integers(0, 5 * HOUR_MS), max_size=4),
)
def test_a_gap_with_no_operator_is_filled_as_if_one_had_run(
    before: list[Any], gap: int, ready_offsets: list[int]
) -> None:
    """Granted GPUs held still while nobody ran (only the operator changes them), and
    pods turned Ready at known times: the resumed totals equal the uninterrupted ones."""
    steady = Meter()
    now = T0
    steady.start(KEY, SERIES, now, granted=1, ready=0)
    for dt, _, *action in before:
        now += dt
        apply(steady, now, KEY, *action)
    series = steady.series_of(KEY)
    assert series is not None
    snapshot = through_status(steady.snapshot(KEY, now))  # type: ignore[arg-type]
    granted, ready = levels(steady, KEY)
    down = now
    # During the gap: the pods ready at the snapshot stay; new ones turn Ready.
    pods = [(down - 1, ready)] + [(down + min(o, gap), 1) for o in ready_offsets]
    for since, _ in sorted(pods[1:]):
        steady.set_ready(KEY, ready + sum(1 for s, _ in pods[1:] if s <= since), since)
    now = down + gap
    resumed = Meter()
    resumed.resume(KEY, series, snapshot, now, granted=granted, ready_pods=pods)
    assert list(resumed.series_rows(now)) == list(steady.series_rows(now))


def test_a_resume_fills_the_gap_from_the_granted_level_and_each_ready_pods_transition() -> None:
    stored = Snapshot(T0, {SERIES: Totals(granted=100_000, ready=50_000)}, requests=7)
    meter = Meter()
    now = T0 + 60_000
    meter.resume(
        KEY,
        SERIES,
        stored,
        now,
        granted=2,
        ready_pods=[
            (T0 - 600_000, 1),  # ready before as_of: the whole gap
            (T0 + 30_000, 1),  # ready during the gap: from its transition
            (None, 2),  # transition unknown: from as_of
        ],
    )
    snapshot = meter.snapshot(KEY, now)
    assert snapshot is not None
    assert snapshot.totals == Totals(
        granted=100_000 + 2 * 60_000, ready=50_000 + 60_000 + 30_000 + 120_000
    )
    assert snapshot.requests == 7
    meter.set_granted(KEY, 0, now)
    assert meter.snapshot(KEY, now + 10_000).totals.granted == 220_000  # type: ignore[union-attr]


def test_a_resume_before_the_pods_are_known_fills_the_ready_gap_once_they_are() -> None:
    stored = Snapshot(T0, {SERIES: Totals(granted=0, ready=10_000)})
    meter = Meter()
    meter.resume(KEY, SERIES, stored, T0 + 5_000, granted=1, ready_pods=None)
    assert meter.pending(KEY)
    meter.set_ready(KEY, 4, T0 + 6_000)  # a partial view is not taken
    meter.settle_ready(KEY, [(T0 - 1, 1)], T0 + 8_000)
    assert not meter.pending(KEY)
    snapshot = meter.snapshot(KEY, T0 + 10_000)
    assert snapshot is not None
    assert snapshot.totals == Totals(granted=10_000, ready=10_000 + 10_000)


def test_a_new_tier_starts_a_new_series_and_an_old_one_resumes_where_it_stopped() -> None:
    meter = Meter()
    meter.start(KEY, Series("gold", L4), T0, granted=2, ready=2)
    meter.relabel(KEY, Series("spot", L4), T0 + 10_000)
    meter.relabel(KEY, Series("gold", L4), T0 + 30_000)
    rows = {r.tier: r for r in meter.series_rows(T0 + 40_000)}
    assert (rows["gold"].granted_seconds, rows["spot"].granted_seconds) == (40.0, 40.0)
    assert rows["gold"].ready_seconds == 2 * (10 + 10)


def test_more_series_than_status_lists_are_retired_into_the_totals() -> None:
    meter = Meter()
    meter.start(KEY, Series("t0", "*"), T0, granted=1, ready=0)
    for i in range(1, MAX_USAGE_SERIES + 3):
        meter.relabel(KEY, Series(f"t{i}", "*"), T0 + i * 1000)
    now = T0 + (MAX_USAGE_SERIES + 3) * 1000
    snapshot = meter.snapshot(KEY, now)
    assert snapshot is not None
    assert len(snapshot.series) == MAX_USAGE_SERIES
    assert snapshot.totals.granted == now - T0
    assert through_status(snapshot).totals == snapshot.totals


def test_status_seconds_read_back_to_the_millisecond() -> None:
    snapshot = Snapshot(T0 + 123, {SERIES: Totals(987_654_321_123, 3)}, requests=5)
    usage = usage_status(snapshot)
    assert usage.as_of == "2027-01-15T08:00:00.123Z"
    assert usage.gpu_seconds_granted == 987_654_321.123
    assert through_status(snapshot) == snapshot
    assert parse_time("2027-01-15T08:00:00Z") == T0
    assert rfc3339_millis(T0) == "2027-01-15T08:00:00.000Z"


def test_a_deleted_deployment_leaves_its_granted_time_in_the_tier() -> None:
    meter = Meter()
    meter.start(KEY, SERIES, T0, granted=3, ready=3)
    meter.forget(KEY, T0 + HOUR_MS)
    assert KEY not in meter
    assert list(meter.series_rows(T0 + 2 * HOUR_MS)) == []
    assert meter.ledger_view("gold", T0 + 2 * HOUR_MS).used(T0 + 2 * HOUR_MS) == {L4: 3 * HOUR_MS}


# --- hourly ledgers -------------------------------------------------------------------


def test_a_segment_is_split_at_hour_boundaries_and_old_hours_leave_the_window() -> None:
    ledger = HourlyLedger(T0)
    ledger.add(L4, T0 + HOUR_MS // 2, T0 + 2 * HOUR_MS, 2)
    hour = T0 // HOUR_MS
    assert ledger.hours == {L4: {hour: HOUR_MS, hour + 1: 2 * HOUR_MS}}
    later = T0 + 25 * HOUR_MS
    assert window_start(later) == T0 + 2 * HOUR_MS
    assert ledger.used(later) == {}
    # A day and more: only the window is kept (the 23 hours before the one just begun).
    ledger.add(L4, T0, T0 + 30 * HOUR_MS, 1)
    assert sum(ledger.hours[L4].values()) == 23 * HOUR_MS
    assert len(ledger.hours[L4]) == 23


@given(st.lists(st.tuples(st.integers(0, 30 * HOUR_MS), st.integers(0, 5 * HOUR_MS)), max_size=20))
def test_the_window_holds_exactly_the_time_inside_it(segments: list[tuple[int, int]]) -> None:
    ledger = HourlyLedger(T0)
    end_of_all = T0 + 40 * HOUR_MS
    for start, length in segments:
        ledger.add(L4, T0 + start, T0 + start + length, 1)
    first = window_start(end_of_all)
    inside = sum(max(0, min(T0 + s + n, end_of_all) - max(T0 + s, first)) for s, n in segments)
    assert sum(ledger.used(end_of_all).values()) == inside


def tier(**spec: Any) -> CapacityTier:
    body = tier_builder(8).build()
    body["spec"].update(spec)
    return CapacityTier.from_k8s(body)


def test_tier_usage_shows_hours_utilisation_and_cost_per_pool() -> None:
    the_tier = tier(
        gpuBudget={L4: 4, "*": 2},
        pricePerGpuHour={L4: "2.50", "*": "1.10"},
        currency="USD",
    )
    ledger = HourlyLedger(T0)
    now = T0 + 2 * HOUR_MS
    ledger.add(L4, T0, now, 2)  # 4 GPU-hours of 8 possible
    ledger.add("*", T0, T0 + HOUR_MS, 1)  # no product named: pool '*'
    ledger.add("NVIDIA-A100", T0, T0 + HOUR_MS, 1)  # no entry of its own: pool '*'
    usage = tier_usage_status(the_tier, ledger, now)
    pools = {p.pool: p for p in usage.pools}
    assert (pools[L4].gpu_hours, pools[L4].budget_gpu_hours) == (4.0, 8.0)
    assert pools[L4].utilization_percent == 50.0
    assert pools[L4].cost == "10.00"
    assert (pools["*"].gpu_hours, pools["*"].utilization_percent) == (2.0, 50.0)
    assert pools["*"].cost == "2.20"
    assert (usage.cost, usage.currency, usage.window_hours) == ("12.20", "USD", 2.0)
    assert usage.summary == f"*=2h (50%), {L4}=4h (50%); cost 12.20 USD"
    restored = HourlyLedger.decode(usage.buckets, parse_time(usage.as_of))
    assert restored is not None and restored.hours == ledger.hours


def test_a_product_without_a_price_has_no_cost() -> None:
    usage = tier_usage_status(
        tier(gpuBudget={"*": 2}, pricePerGpuHour={L4: "3"}),
        _ledger_with("NVIDIA-A100", 1),
        T0 + HOUR_MS,
    )
    assert [p.cost for p in usage.pools] == [None] and usage.cost is None
    free = tier_usage_status(tier(gpuBudget={"*": 2}), _ledger_with("*", 1), T0 + HOUR_MS)
    assert free.cost is None and free.pools[0].utilization_percent == 50.0


def _ledger_with(product: str, gpus: int) -> HourlyLedger:
    ledger = HourlyLedger(T0)
    ledger.add(product, T0, T0 + HOUR_MS, gpus)
    return ledger


def test_prices_are_decimal_strings_with_valid_keys() -> None:
    assert tier(pricePerGpuHour={L4: "2.5"}).spec.price_per_gpu_hour == {L4: "2.5"}
    assert Decimal(tier(pricePerGpuHour={"*": "0.000001"}).spec.price_per_gpu_hour["*"])  # type: ignore[index]
    for bad in ({L4: "-1"}, {L4: "1e3"}, {L4: "2,50"}, {"bad key!": "1"}):
        try:
            tier(pricePerGpuHour=bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
    try:
        tier(currency="usd")
    except ValueError:
        return
    raise AssertionError("accepted a lower-case currency")


# --- when status carries the totals ---------------------------------------------------


def usage_at(ms: int, granted: float) -> ModelDeploymentUsage:
    return ModelDeploymentUsage(
        gpu_seconds_granted=granted,
        gpu_seconds_ready=0,
        requests_served=0,
        as_of=rfc3339_millis(ms),
    )


def test_usage_is_written_with_other_changes_or_when_old_enough_never_alone_sooner() -> None:
    stored = ModelDeploymentStatus(replicas=1, usage=usage_at(T0, 10))
    same = ModelDeploymentStatus(replicas=1)  # plan's status carries previous.usage
    same = same.model_copy(update={"usage": stored.usage})
    soon = usage_at(T0 + 29_000, 40)
    assert with_usage(stored, same, soon) == stored  # nothing to write
    late = usage_at(T0 + 30_000, 41)
    assert with_usage(stored, same, late).usage == late
    idle = usage_at(T0 + 60_000, 10)  # no GPU held: nothing moved, nothing written
    assert with_usage(stored, same, idle) == stored
    changed = same.model_copy(update={"replicas": 2})
    assert with_usage(stored, changed, soon).usage == soon
    assert with_usage(ModelDeploymentStatus(), ModelDeploymentStatus(), soon).usage == soon
    assert with_usage(stored, same, None) == same


def test_tier_usage_is_refreshed_with_other_changes_or_when_old_enough() -> None:
    the_tier = tier(gpuBudget={L4: 4})
    first = tier_usage_status(the_tier, _ledger_with(L4, 1), T0 + HOUR_MS)
    stored = CapacityTierStatus(consumer_count=1, usage=first)
    fresh_status = CapacityTierStatus(consumer_count=1)
    soon = tier_usage_status(the_tier, _ledger_with(L4, 2), T0 + HOUR_MS + 10_000)
    assert with_tier_usage(stored, fresh_status, soon) == stored
    late = tier_usage_status(the_tier, _ledger_with(L4, 2), T0 + HOUR_MS + 30_000)
    assert with_tier_usage(stored, fresh_status, late).usage == late
    moved = CapacityTierStatus(consumer_count=2)
    assert with_tier_usage(stored, moved, soon).usage == soon
    assert with_tier_usage(None, fresh_status, soon).usage == soon


# --- pods -----------------------------------------------------------------------------


def pod(ready: str, since: str | None = "2027-01-15T08:00:10Z", gpus: str = "2") -> dict[str, Any]:
    condition = {"type": "Ready", "status": ready}
    if since is not None:
        condition["lastTransitionTime"] = since
    return {
        "metadata": {"namespace": "team-a", "name": "llama-0"},
        "spec": {
            "containers": [
                {"name": "triton", "image": "x", "resources": {"limits": {"nvidia.com/gpu": gpus}}},
                {"name": "sidecar", "image": "y"},
            ]
        },
        "status": {"phase": "Running", "conditions": [condition]},
    }


def test_a_trimmed_pod_keeps_what_the_meter_reads() -> None:
    kept = trimmed_pod(pod("True"))
    assert pod_ready_since(kept) == (True, T0 + 10_000)
    assert pod_gpus(kept, default=1) == 2
    assert "image" not in str(kept)
    assert pod_ready_since(trimmed_pod(pod("False"))) == (False, None)
    terminating = pod("True")
    terminating["metadata"]["deletionTimestamp"] = "2027-01-15T08:00:20Z"
    assert pod_ready_since(terminating) == (False, None)
    assert pod_ready_since(pod("True", since=None)) == (True, None)
    assert pod_gpus({"metadata": {}}, default=3) == 3  # no spec at hand


def test_big_fleets_write_usage_less_often() -> None:
    """Usage alone never writes more than MAX_USAGE_WRITES_PER_S statuses a second."""
    from turnpike.capacity.meter import MAX_USAGE_WRITES_PER_S, USAGE_FLUSH_MS, usage_flush_ms

    assert usage_flush_ms(10) == USAGE_FLUSH_MS
    for fleet in (1_000, 5_000, 20_000):
        assert fleet / (usage_flush_ms(fleet) / 1000) <= MAX_USAGE_WRITES_PER_S
