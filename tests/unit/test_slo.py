"""The SLO meter: per-interval estimate, the window, status, SLOMet, and the
autoscaler's use of it. All pure: scripted counters, a simulated clock."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.builders import deployment, md
from turnpike.api.modeldeployment import SLO
from turnpike.autoscale.history import History
from turnpike.autoscale.policy import Params, SLOSignal, decide
from turnpike.autoscale.signal import CounterDelta, Observation, PodMetrics, counter_delta
from turnpike.reconcile.plan import Observed, plan
from turnpike.reconcile.validation import parse_model_deployment
from turnpike.slo import Counts, Report, Window, interval_of, slo_condition, slo_status, window_key
from turnpike.slo.estimate import pod_counts
from turnpike.status import parse_status

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a minute boundary
NOW = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
SPEC = SLO(threshold_milliseconds=200, objective_percent=99, window_minutes=60)


def delta(n: float, mean_ms: float, *, failed: float = 0.0, wait_ms: float = 0.0) -> CounterDelta:
    return CounterDelta(
        success=n,
        failure=failed,
        queue_duration_us=(n + failed) * wait_ms * 1000,
        request_duration_us=n * mean_ms * 1000,
    )


# --- the estimate -----------------------------------------------------------------


def test_an_interval_under_the_threshold_counts_every_success_as_good() -> None:
    counts, mean = pod_counts(delta(10, 50), "requestLatency", 200)
    assert (counts.requests, counts.good, mean) == (10, 10, 50)
    assert counts.good_lower == pytest.approx(10 * (1 - 50 / 200))


def test_an_interval_over_the_threshold_counts_none_and_failures_are_never_good() -> None:
    over, _ = pod_counts(delta(10, 250), "requestLatency", 200)
    assert (over.requests, over.good, over.good_lower) == (10, 0, 0)
    failed, _ = pod_counts(delta(8, 10, failed=2), "requestLatency", 200)
    assert (failed.requests, failed.good) == (10, 8)


def test_queue_wait_slos_read_the_queue_counters() -> None:
    counts, mean = pod_counts(delta(4, 500, wait_ms=30), "queueWait", 50)
    assert mean == pytest.approx(30)
    assert counts.good == 4


def test_pods_sum_and_latency_is_weighted_by_requests() -> None:
    interval = interval_of(
        {"a": delta(30, 100, wait_ms=40), "b": delta(10, 300, wait_ms=240)}, "requestLatency", 200
    )
    assert interval.counts == Counts(40, 30, pytest.approx(30 * 0.5))
    assert interval.latency_ms == pytest.approx((30 * 100 + 10 * 300) / 40)
    assert interval.queue_wait_ms == pytest.approx((30 * 40 + 10 * 240) / 40)


def test_counter_deltas_survive_a_triton_restart() -> None:
    before = PodMetrics(requests=100, success=100, request_duration_us=5e6)
    after = PodMetrics(requests=3, success=3, request_duration_us=1.5e5)
    assert counter_delta(before, after) == CounterDelta(3, 0, 0, 1.5e5)
    assert counter_delta(None, after) is None


latencies = st.lists(st.floats(0, 5_000, allow_nan=False), min_size=1, max_size=50)


@given(latencies, st.floats(1, 2_000))
def test_the_lower_bound_never_exceeds_the_true_good_count(
    samples: list[float], threshold: float
) -> None:
    """Markov's inequality: whatever the latencies within an interval, the bound holds;
    and when they all lie on one side of the threshold, the estimate is exact."""
    mean = sum(samples) / len(samples)
    counts, _ = pod_counts(delta(len(samples), mean), "requestLatency", threshold)
    truly_good = sum(1 for x in samples if x <= threshold)
    assert counts.good_lower <= truly_good + 1e-6
    assert 0 <= counts.good_lower <= counts.good <= counts.requests
    if all(x <= threshold for x in samples) or all(x > threshold for x in samples):
        assert counts.good == truly_good


# --- the window -------------------------------------------------------------------


def filled(minutes: int, per_minute: Counts, key: str = "k", window: int = 60) -> Window:
    w = Window.empty(key, window)
    for m in range(minutes):
        w = w.add(T0 + 60 * m + 30, per_minute)
    return w


def test_the_window_forgets_what_fell_out_of_it() -> None:
    w = filled(90, Counts(10, 9, 5))
    now = T0 + 60 * 89 + 30
    assert w.total(now).requests == pytest.approx(600)  # the last 60 minutes
    assert w.recent(now, 5) == Counts(50, 45, 25)
    assert w.covered_minutes(now) == pytest.approx(59.5)  # from the oldest kept minute


def test_a_day_fits_in_120_coarse_buckets() -> None:
    w = Window.empty("k", 1440)
    for m in range(0, 2000, 7):
        w = w.add(T0 + 60 * m, Counts(1, 1, 1))
    raw = w.to_dict()
    assert len(raw["coarse"]) <= 121
    assert len(raw["fine"]) <= 60


def test_a_restored_window_continues_where_it_was() -> None:
    w = filled(20, Counts(10, 9, 5))
    now = T0 + 60 * 19 + 30
    back = Window.restore(w.to_dict(), "k", 60, now)
    assert back.total(now) == w.total(now)
    assert back.recent(now, 5) == w.recent(now, 5)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {"v": 1, "key": "other", "coarse": [[29446260, 5, 5, 5]]},
        {"v": 2, "key": "k"},
        {"v": 1, "key": "k", "coarse": "garbage"},
        {"v": 1, "key": "k", "coarse": [[1, 2]]},
    ],
)
def test_counts_of_another_slo_or_garbage_start_afresh(raw: dict[str, Any] | None) -> None:
    assert Window.restore(raw, "k", 60, T0).total(T0) == Counts()


def test_impossible_rows_are_dropped_not_believed() -> None:
    minute = int(T0 // 60)
    raw = {
        "v": 1,
        "key": "k",
        "coarse": [[minute, 10, 11, 1], [minute + 1, -1, 0, 0], [minute + 2, 4, 4, 2]],
    }
    assert Window.restore(raw, "k", 60, T0 + 300).total(T0 + 300) == Counts(4, 4, 2)


@given(st.lists(st.tuples(st.integers(0, 7200), st.integers(0, 50), st.integers(0, 50))))
def test_window_totals_equal_the_sum_of_what_was_added(rows: list[tuple[int, int, int]]) -> None:
    w = Window.empty("k", 240)
    expected = 0
    end = T0 + 7200
    for offset, n, good in sorted(rows):
        good = min(good, n)
        w = w.add(T0 + offset, Counts(n, good, good))
        expected += n
    assert w.total(end).requests == expected  # 240 minutes cover all of two hours
    assert Window.restore(w.to_dict(), "k", 240, end).total(end).requests == expected


# --- status and the condition ----------------------------------------------------


def report(w: Window, now: float, **fields: Any) -> Report:
    return Report(w, now, **fields)


def test_status_reports_attainment_budget_and_burn() -> None:
    w = filled(10, Counts(100, 99.5, 80))  # 0.5 % bad against a 1 % budget
    now = T0 + 60 * 9 + 30
    status = slo_status(SPEC, report(w, now))
    assert status.attainment == "99.50%"
    assert status.attainment_lower_bound_percent == pytest.approx(80)
    assert status.error_budget_remaining_percent == pytest.approx(50)
    assert status.burn_rate == pytest.approx(0.5)
    assert status.requests == 1000
    assert slo_condition(SPEC, status, None, False)[:2] == ("True", "Met")


@pytest.mark.parametrize(
    ("good", "limited", "reason"),
    [(90, False, "Burning"), (90, True, "BudgetLimited")],
)  # 10 % bad against a 1 % budget: burn 10 over both windows
def test_burning_the_budget_turns_slomet_false_and_says_what_limits(
    good: float, limited: bool, reason: str
) -> None:
    w = filled(10, Counts(100, good, 0))
    status = slo_status(SPEC, report(w, T0 + 570))
    assert slo_condition(SPEC, status, None, limited)[:2] == ("False", reason)


def test_a_spent_budget_stays_false_after_the_burning_stopped() -> None:
    w = filled(5, Counts(100, 50, 0))
    for m in range(5, 12):
        w = w.add(T0 + 60 * m + 30, Counts(100, 100, 100))
    status = slo_status(SPEC, report(w, T0 + 60 * 11 + 30))
    assert status.burn_rate == 0
    assert slo_condition(SPEC, status, None, False)[:2] == ("False", "BudgetSpent")


def test_no_traffic_is_unknown_and_failed_scrapes_are_metrics_unavailable() -> None:
    empty = slo_status(SPEC, report(Window.empty("k", 60), T0))
    assert slo_condition(SPEC, empty, None, False)[:2] == ("Unknown", "NoTraffic")
    status, reason, message = slo_condition(SPEC, empty, "no pod answered (a: timeout)", False)
    assert (status, reason) == ("Unknown", "MetricsUnavailable")  # nothing measured yet
    assert "timeout" in message


def test_an_outage_after_good_traffic_is_not_met() -> None:
    """Every pod gone (crash loop): the old good counts must not keep SLOMet True."""
    w = filled(10, Counts(100, 100, 90))
    status = slo_status(SPEC, report(w, T0 + 570))
    assert slo_condition(SPEC, status, None, False)[:2] == ("True", "Met")
    assert slo_condition(SPEC, status, "no pod is ready to serve", False)[:2] == (
        "False",
        "MetricsUnavailable",
    )


def test_burning_has_hysteresis_and_one_slow_minute_does_not_flip_it() -> None:
    # A day's SLO; one fully bad minute after ten good hours: 5m burn 20, 1h burn ~1.7.
    day = SLO(threshold_milliseconds=200, objective_percent=99, window_minutes=1440)
    end = T0 + 599 * 60 + 30
    w = filled(599, Counts(100, 100, 100), window=1440).add(end, Counts(100, 0, 0))
    status = slo_status(day, report(w, end))
    assert status.burn_rate_hour is not None and 1 < status.burn_rate_hour < 2
    assert slo_condition(day, status, None, False)[:2] == ("True", "Met")
    # Burning at 1.5× over both windows: not entered, but kept once it was Burning.
    w = filled(540, Counts(1000, 1000, 1000), window=1440)
    for m in range(540, 600):
        w = w.add(T0 + m * 60 + 30, Counts(1000, 985, 985))
    status = slo_status(day, report(w, end))
    assert status.burn_rate == pytest.approx(1.5)
    assert slo_condition(day, status, None, False)[:2] == ("True", "Met")
    assert slo_condition(day, status, None, False, was_burning=True)[:2] == ("False", "Burning")


# --- the policy ------------------------------------------------------------------

PARAMS = Params(min_replicas=1, max_replicas=10, target=4.0, scrape_interval_s=2.0)


def decide_with(
    slo: SLOSignal | None, *, current: int = 2, queue: float = 8.0, ready: int | None = None
) -> Any:
    pods = tuple(f"p{i}" for i in range(current))
    obs = Observation(time=T0, queue=queue, pods=pods, queues=dict.fromkeys(pods, queue / current))
    return decide(
        PARAMS,
        current=current,
        ready=current if ready is None else ready,
        starting=0,
        history=History(),
        now=T0,
        observation=obs,
        slo=slo,
    )


def signal(latency: float, wait: float, burn: float | None = None) -> SLOSignal:
    return SLOSignal("requestLatency ≤ 200ms", 200.0, latency, wait, burn)


def test_latency_over_the_threshold_scales_up_when_the_queue_alone_would_not() -> None:
    assert decide_with(None).replicas == 2  # queue 4/replica: on target
    decision = decide_with(signal(latency=450, wait=400))
    # 400 ms of queue wait may be 150 ms (200 - 50 ms of service): ceil(2 × 400 / 150) = 6,
    # bounded by maxScaleUpRate 2 × 2 ready.
    assert decision.replicas == 4
    assert "SLO requestLatency ≤ 200ms" in decision.reason
    assert decision.limited_by_rate


def test_a_threshold_below_the_service_time_is_not_chased() -> None:
    decision = decide_with(signal(latency=300, wait=0.5))
    assert decision.replicas == 2
    assert "more replicas cannot meet it" in decision.reason


def test_a_service_time_that_nearly_uses_up_the_threshold_is_not_chased() -> None:
    """190 ms of compute under a 200 ms threshold leaves 10 ms for queueing, below
    what replicas can reliably remove: scaling on it would never end."""
    decision = decide_with(signal(latency=205, wait=15))  # allowed 10 ms < 10 % of 200
    assert decision.replicas == 2
    assert "more replicas cannot meet it" in decision.reason


def first_scale_down() -> dict[str, Any]:
    """decide()'s arguments at the first tick an idle fleet of 3 would shrink on."""
    pods = ("p0", "p1", "p2")
    history = History()
    t = T0
    for _ in range(100):  # empty queues until the stabilization window lets it shrink
        t += 2
        obs = Observation(time=t, queue=0, pods=pods, queues=dict.fromkeys(pods, 0.0))
        args: dict[str, Any] = {
            "current": 3,
            "ready": 3,
            "starting": 0,
            "history": history,
            "now": t,
            "observation": obs,
        }
        free = decide(PARAMS, **args)
        if free.replicas < 3:
            assert free.replicas == 2
            return args
        history = free.history
    pytest.fail("an idle fleet never scaled down")


def test_the_slo_is_a_floor_for_scale_down() -> None:
    args = first_scale_down()
    # 60 ms of queue wait within the 150 ms allowed (threshold 200, service 50):
    # 3 × 60 / 150 = 1.2, so two replicas do.
    assert decide(PARAMS, **args, slo=signal(latency=110, wait=60, burn=0.0)).replicas == 2
    # 140 ms of wait: 3 × 140 / 150 = 2.8, so all three are needed.
    tight = decide(PARAMS, **args, slo=signal(latency=190, wait=140, burn=0.0))
    assert tight.replicas == 3
    assert "needs 3 replicas" in tight.reason


def test_a_burning_budget_holds_a_scale_down() -> None:
    args = first_scale_down()
    held = decide(PARAMS, **args, slo=signal(latency=150, wait=5, burn=3.0))
    assert held.replicas == 3
    assert "burns its error budget" in held.reason
    assert decide(PARAMS, **args, slo=signal(latency=150, wait=5, burn=0.5)).replicas == 2


# --- the plan --------------------------------------------------------------------


def slo_body(**status: Any) -> dict[str, Any]:
    spec = {"thresholdMilliseconds": 200, "objectivePercent": 99, "windowMinutes": 60}
    return md().spec(slo=spec).with_status(**status).build()


def observe(body: dict[str, Any], w: Window | None, **fields: Any) -> Observed:
    parsed = parse_model_deployment(body)
    return Observed(
        body,
        parsed,
        parse_status(body.get("status")),
        NOW,
        children=[deployment(1).build()],
        slo=report(w, T0 + 570, **fields) if w is not None else None,
    )


def test_plan_writes_status_slo_and_the_condition() -> None:
    body = slo_body()
    key = window_key(SLO(threshold_milliseconds=200, objective_percent=99, window_minutes=60))
    result = plan(observe(body, filled(10, Counts(100, 80, 0), key=key)))
    assert result.status.slo is not None
    assert result.status.slo.attainment == "80.00%"
    slo_met = next(c for c in result.status.conditions if c.type == "SLOMet")
    assert (slo_met.status, slo_met.reason) == ("False", "Burning")
    assert [e.reason for e in result.events if e.reason.startswith("SLO")] == ["SLOBurning"]


def test_between_flushes_status_keeps_the_written_numbers_unless_the_condition_moves() -> None:
    key = window_key(SLO(threshold_milliseconds=200, objective_percent=99, window_minutes=60))
    first = plan(observe(slo_body(), filled(10, Counts(100, 100, 90), key=key)))
    stored = slo_body(**first.status.to_k8s())
    # More good traffic, not yet due: nothing to write.
    again = plan(observe(stored, filled(11, Counts(100, 100, 90), key=key), flush=False))
    assert again.status.slo == first.status.slo
    assert not [e for e in again.events if e.reason.startswith("SLO")]
    # Burning now: the condition moves, so the numbers are written at once.
    bad = filled(11, Counts(100, 100, 90), key=key).add(T0 + 570, Counts(1000, 0, 0))
    burning = plan(observe(stored, bad, flush=False))
    assert burning.status.slo != first.status.slo
    assert [e.reason for e in burning.events if e.reason.startswith("SLO")] == ["SLOBurning"]


def test_without_an_slo_there_is_no_condition_and_no_status() -> None:
    result = plan(observe(md().build(), None))
    assert result.status.slo is None
    assert not any(c.type == "SLOMet" for c in result.status.conditions)


@given(
    st.floats(0.001, 3_600_000, allow_nan=False),
    st.floats(0.001, 99.999),
    st.integers(5, 43_200),
)
def test_any_admitted_slo_measures_without_raising(
    threshold: float, objective: float, window: int
) -> None:
    slo = SLO(threshold_milliseconds=threshold, objective_percent=objective, window_minutes=window)
    w = Window.empty(window_key(slo), window).add(T0, Counts(5, 3, 1))
    status = slo_status(slo, Report(w, T0))
    slo_condition(slo, status, None, False)
    assert status.attainment_percent is not None and math.isfinite(status.attainment_percent)
