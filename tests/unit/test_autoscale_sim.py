"""The autoscaling simulator (bench/autoscale_sim) and its baseline autoscalers.

The simulator must be right before its comparison means anything: requests
are conserved, capacity helps, loading takes its time, and each baseline
reproduces behaviour its upstream documents.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.autoscale_sim import run as runmod
from bench.autoscale_sim.model import ClusterView, ServingModel, simulate
from bench.autoscale_sim.policies import (
    HPAController,
    HPAPolicy,
    KEDAPolicy,
    KPAPolicy,
    Prometheus,
    ScriptedPolicy,
    StaticPolicy,
    TurnpikePolicy,
    external_per_pod_replicas,
    plain_metric_replicas,
    turnpike_params,
)
from bench.autoscale_sim.traces import ALL_TRACES, constant_trace, make_trace, step_trace

MODEL = ServingModel(slots=4, load_s=60.0, sample_s=1.0)


def view(
    now: float,
    *,
    ready: int,
    loading: int = 0,
    queue: int = 0,
    in_service: int = 0,
    area: float = 0.0,
) -> ClusterView:
    return ClusterView(
        now=now,
        spec_replicas=ready + loading,
        ready=tuple(range(ready)),
        loading=tuple(range(ready, ready + loading)),
        queue=queue,
        in_service=in_service,
        concurrency_area=area,
    )


# --------------------------------------------------------------------------- #
# Traces


def test_traces_are_deterministic_per_seed() -> None:
    a = make_trace("bursty", duration_s=600, seed=3)
    b = make_trace("bursty", duration_s=600, seed=3)
    c = make_trace("bursty", duration_s=600, seed=4)
    assert a == b
    assert a.arrivals != c.arrivals
    assert list(a.arrivals) == sorted(a.arrivals)
    assert len(a.arrivals) == len(a.service_s)


@pytest.mark.parametrize("name", list(ALL_TRACES))
def test_each_trace_offers_its_documented_load(name: str) -> None:
    trace = make_trace(name, duration_s=1800, warmup_s=120, seed=1)
    assert trace.duration_s == 1920
    assert all(r == trace.rates[0] for r in trace.rates[:120])  # warm-up replays the start
    mean_rate = sum(trace.rates) / len(trace.rates)
    assert trace.requests == pytest.approx(mean_rate * trace.duration_s, rel=0.05)
    assert float(np.mean(trace.service_s)) == pytest.approx(1.0, rel=0.05)
    if name == "spiky":
        base = trace.rates[0]
        assert 5 * base <= max(trace.rates) <= 10 * base


# --------------------------------------------------------------------------- #
# Simulator


def test_every_arrived_request_is_served_or_still_waiting() -> None:
    # Overloaded at the end, with a scale-down that drains busy replicas.
    trace = step_trace([(120, 30.0), (120, 10.0), (60, 60.0)], seed=1)
    policy = ScriptedPolicy([(0.0, 8), (130.0, 2), (200.0, 5)])
    r = simulate(trace, policy, MODEL, initial_replicas=8)
    assert r.total_arrived == trace.requests
    assert r.total_arrived == r.completed + r.in_service_at_end + r.queued_at_end
    assert r.queued_at_end > 0  # the end is overloaded, so the check has teeth
    assert r.arrived == len(r.waits)
    assert np.all(np.isfinite(r.waits)) and np.all(r.waits >= 0)


def test_more_replicas_never_increase_any_wait() -> None:
    trace = constant_trace(14.0, 300, seed=2)  # 3.5 replicas of work at 4 slots
    waits = [simulate(trace, StaticPolicy(n), MODEL, initial_replicas=n).waits for n in range(1, 7)]
    for fewer, more in itertools.pairwise(waits):
        assert np.all(more <= fewer + 1e-9)
    assert waits[0].mean() > waits[-1].mean()
    assert np.mean(waits[-1] > 0) < 0.01  # 24 slots for ~14 in flight


def test_a_new_replica_holds_a_gpu_at_once_but_serves_after_the_load_delay() -> None:
    trace = constant_trace(10.0, 200, seed=3)  # more than 1 replica can serve
    r = simulate(trace, ScriptedPolicy([(10.0, 2)]), MODEL, initial_replicas=1)
    s = r.series
    at = {round(t): (h, rd) for t, h, rd in zip(s.t, s.holding, s.ready, strict=True)}
    assert at[9] == (1, 1)
    assert at[10] == (2, 1)
    assert at[69] == (2, 1)  # still loading: 60 s
    assert at[70] == (2, 2)
    assert r.gpu_seconds == pytest.approx(200 + 190)
    assert r.pods_started == 1 and r.actions == 1


def test_scale_down_removes_loading_replicas_first_and_drains_busy_ones() -> None:
    trace = constant_trace(3.0, 100, seed=4)
    policy = ScriptedPolicy([(10.0, 3), (20.0, 1)])
    r = simulate(trace, policy, MODEL, initial_replicas=2)
    s = r.series
    at = {
        round(t): (sp, h, rd) for t, sp, h, rd in zip(s.t, s.spec, s.holding, s.ready, strict=True)
    }
    assert at[15] == (3, 3, 2)
    # At 20 s the loading replica goes at once; the ready one drains (at most
    # a few seconds of in-flight work), then frees its GPU.
    assert at[20][0] == 1 and at[20][2] == 1
    assert at[30] == (1, 1, 1)
    assert r.total_arrived == r.completed + r.in_service_at_end + r.queued_at_end


def test_warmup_is_simulated_but_not_measured() -> None:
    trace = make_trace("steady", duration_s=120, warmup_s=60, seed=5)
    r = simulate(trace, StaticPolicy(7), ServingModel(), initial_replicas=7)
    assert r.duration_s == pytest.approx(120)
    assert r.gpu_seconds == pytest.approx(7 * 120)
    assert r.arrived == sum(a >= 60 for a in trace.arrivals)
    assert r.actions == 0  # the static policy acted at t=0, inside the warm-up
    assert r.series.t[0] == 0.0


def test_simulation_is_deterministic() -> None:
    trace = make_trace("spiky", duration_s=600, seed=6)
    a = simulate(trace, TurnpikePolicy(turnpike_params(20)), MODEL, initial_replicas=4)
    b = simulate(trace, TurnpikePolicy(turnpike_params(20)), MODEL, initial_replicas=4)
    assert np.array_equal(a.waits, b.waits)
    assert (a.gpu_seconds, a.actions) == (b.gpu_seconds, b.actions)


# --------------------------------------------------------------------------- #
# Turnpike adapter


def test_turnpike_adapter_drives_the_real_policy_every_scrape() -> None:
    params = turnpike_params(10)
    policy = TurnpikePolicy(params)
    # 2 ready replicas, queue 40 (20 per replica) → scale up, bounded by 2× ready.
    assert policy.tick(view(0.0, ready=2, queue=40)) == 4
    assert policy.last is not None and "scale up 2→4" in policy.last.reason
    assert policy.next_tick == params.scrape_interval_s
    # Loading replicas do not raise the bound: still 2 ready → hold at 4.
    assert policy.tick(view(2.0, ready=2, loading=2, queue=80)) == 4
    assert policy.last is not None and policy.last.limited_by_rate


# --------------------------------------------------------------------------- #
# HPA


def test_hpa_holds_replicas_for_the_300s_stabilization_window_after_a_drop() -> None:
    hpa = HPAController(min_replicas=1, max_replicas=20)
    replicas = 10
    t = 0.0
    for _ in range(10):  # busy: the metric wants 10
        replicas = hpa.reconcile(t, replicas, 10)
        t += 15
    last_high = t - 15
    while t < last_high + 300:
        replicas = hpa.reconcile(t, replicas, 2)  # load dropped
        assert replicas == 10, f"scaled down {t - last_high:.0f}s after the drop"
        t += 15
    assert hpa.reconcile(t, replicas, 2) == 2  # then 100% per 15 s allows it at once


def test_hpa_scale_up_is_limited_to_max_of_double_or_four_pods_per_15s() -> None:
    hpa = HPAController(min_replicas=1, max_replicas=100)
    assert hpa.reconcile(0.0, 1, 50) == 5  # 1 + 4 pods beats 100 % of 1
    assert hpa.reconcile(5.0, 5, 50) == 5  # the 15 s period already added 4
    assert hpa.reconcile(15.0, 5, 50) == 10  # new period: 100 % of 5
    assert hpa.reconcile(30.0, 10, 50) == 20


def test_hpa_tolerance_and_missing_pods() -> None:
    hpa = HPAController(min_replicas=1, max_replicas=20)
    # Within ±10 % of the 4.0 target: no change.
    assert (
        plain_metric_replicas(
            current=3,
            metrics={0: 4200, 1: 4300, 2: 4000},
            missing=[],
            target_milli=4000,
            controller=hpa,
        )
        == 3
    )
    # No missing pods: ceil(ratio × pods with metrics).
    assert (
        plain_metric_replicas(
            current=2, metrics={0: 12000, 1: 12000}, missing=[], target_milli=4000, controller=hpa
        )
        == 6
    )
    # Scale-up with pods still loading (no metrics): they count as 0, which
    # here brings the ratio back to 1 → hold instead of 3 replicas.
    assert (
        plain_metric_replicas(
            current=3, metrics={0: 12000}, missing=[1, 2], target_milli=4000, controller=hpa
        )
        == 3
    )
    # Scale-down with missing pods: they count as exactly the target.
    assert (
        plain_metric_replicas(
            current=4, metrics={0: 0, 1: 0}, missing=[2, 3], target_milli=4000, controller=hpa
        )
        == 2
    )
    assert (
        plain_metric_replicas(current=1, metrics={}, missing=[0], target_milli=4000, controller=hpa)
        is None
    )


def test_hpa_reads_prometheus_values_that_lag_by_the_scrape() -> None:
    hpa = HPAPolicy(
        target=4.0, min_replicas=1, max_replicas=20, sync_offset_s=7.5, prometheus=Prometheus()
    )
    assert hpa.next_tick == 0.0
    assert hpa.tick(view(0.0, ready=2, queue=8)) is None  # scrape only: 4 per pod
    assert hpa.next_tick == 7.5
    # The queue jumps after the scrape; the sync still sees 4 per pod: hold.
    assert hpa.tick(view(7.5, ready=2, queue=80)) == 2
    assert hpa.tick(view(15.0, ready=2, queue=80)) is None  # the scrape that sees it
    # 40 per pod wants 20 replicas; the rate limit allows max(2 × 2, 2 + 4).
    assert hpa.tick(view(22.5, ready=2, queue=80)) == 6


# --------------------------------------------------------------------------- #
# KEDA


def test_keda_uses_the_total_queue_over_all_pods_including_loading_ones() -> None:
    hpa = HPAController(min_replicas=1, max_replicas=20)
    # ratio = 40 / (4 × 4) = 2.5 → ceil(40 / 4) = 10.
    assert (
        external_per_pod_replicas(
            status_replicas=4, usage_milli=40000, target_milli=4000, controller=hpa
        )
        == 10
    )
    # ratio = 17 / 16 within 10 % → hold.
    assert (
        external_per_pod_replicas(
            status_replicas=4, usage_milli=17000, target_milli=4000, controller=hpa
        )
        == 4
    )


def test_keda_cached_metrics_only_change_at_the_polling_interval() -> None:
    keda = KEDAPolicy(
        target=4.0,
        min_replicas=1,
        max_replicas=48,
        cached=True,
        sync_offset_s=15.0,
        polling_offset_s=7.5,
    )
    keda.tick(view(0.0, ready=4, queue=0))  # scrape
    keda.tick(view(7.5, ready=4, queue=100))  # poll caches the scraped 0
    keda.tick(view(15.0, ready=4, queue=100))  # scrape sees 100; sync reads cache 0
    assert keda.cache == 0.0
    assert keda.tick(view(30.0, ready=4, queue=100)) == 1  # cache still 0: scale down
    keda.tick(view(37.5, ready=4, queue=0))  # poll: the value scraped at 30 s
    assert keda.cache == pytest.approx(100.0)


# --------------------------------------------------------------------------- #
# KPA


def _kpa_feed(kpa: KPAPolicy, concurrency: list[float], ready: int) -> list[int | None]:
    """Drive the KPA at 1 s steps with the given per-second concurrency."""
    out: list[int | None] = []
    area = 0.0
    for second, level in enumerate(concurrency, start=1):
        area += level
        out.append(kpa.tick(view(float(second), ready=ready, area=area)))
    return out


def test_kpa_panics_on_a_2x_burst_and_never_scales_down_while_panicking() -> None:
    kpa = KPAPolicy(target=10.0, min_replicas=1, max_replicas=100)
    steady = _kpa_feed(kpa, [40.0] * 60, ready=4)
    assert steady[-1] == 4 and not kpa.panicking
    burst = _kpa_feed_from(kpa, 61, [80.0] * 6, ready=4)
    assert kpa.panicking, "a 2× burst must trigger panic mode within the 6 s panic window"
    assert max(d for d in burst if d is not None) >= 8
    peak = kpa.max_panic_pods
    calm = _kpa_feed_from(kpa, 67, [40.0] * 30, ready=4)
    assert all(d is None or d >= peak for d in calm)  # no decrease while panicking
    assert kpa.panicking
    _kpa_feed_from(kpa, 97, [40.0] * 40, ready=4)
    assert not kpa.panicking  # a stable window without exceeding the threshold


def _kpa_feed_from(
    kpa: KPAPolicy, first_second: int, concurrency: list[float], ready: int
) -> list[int | None]:
    out: list[int | None] = []
    area = kpa._area
    for i, level in enumerate(concurrency):
        area += level
        out.append(kpa.tick(view(float(first_second + i), ready=ready, area=area)))
    return out


def test_kpa_does_not_panic_below_the_200_percent_threshold() -> None:
    kpa = KPAPolicy(target=10.0, min_replicas=1, max_replicas=100)
    _kpa_feed(kpa, [40.0] * 60, ready=4)
    decisions = _kpa_feed_from(kpa, 61, [70.0] * 20, ready=4)
    assert not kpa.panicking
    assert decisions[-1] == 5  # stable window: ceil(mean of 40 s at 40, 20 s at 70 / 10)


def test_kpa_stable_mode_scales_down_at_most_by_half_per_tick() -> None:
    kpa = KPAPolicy(target=10.0, min_replicas=1, max_replicas=100)
    decisions = [d for d in _kpa_feed(kpa, [0.0] * 10, ready=16) if d is not None]
    assert decisions[0] == 8  # floor(16 / maxScaleDownRate 2)
    assert not kpa.panicking


# --------------------------------------------------------------------------- #
# The runner


def test_runner_end_to_end_on_a_tiny_config(tmp_path: Path) -> None:
    cfg = replace(runmod.QUICK, duration_s=180.0, warmup_s=60.0)
    outcome = runmod.run(
        cfg,
        traces=["steady", "flash-crowd"],
        balancing=("shared", "round-robin"),
        frontier_max=(48,),
        quick=True,
    )
    shared = {r.policy for r in outcome.rows_for("shared", "steady")}
    assert runmod.TURNPIKE.label in shared and runmod.PREDICTIVE.label in shared
    assert {s.label for s in (*runmod.FAIR, *runmod.MISCONFIGURED)} <= shared
    rr = {r.policy for r in outcome.rows_for("round-robin", "steady")}
    assert not any("misconfigured" in p for p in rr)  # shown on the shared queue only
    headline = runmod.headline_table(outcome, runmod.held_out(outcome))
    assert [row[1] for row in headline[1:]] == ["flash-crowd", "flash-crowd"]
    assert len(runmod.matched_table(outcome)) == 1 + 2
    doc = tmp_path / "sim.md"
    doc.write_text(f"# Title\n\nintro\n\n{runmod.BEGIN}\nold\n{runmod.END}\n\noutro\n")
    runmod.write_markdown(doc, outcome, "2026-01-01", "python -m bench.autoscale_sim.run")
    text = doc.read_text()
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith("\n\noutro\n")
    assert "old" not in text and "Generated 2026-01-01" in text
    assert "held-out traces" in text and "misconfigured" in text
    assert math.isfinite(outcome.ideal_hours("steady"))
    png = tmp_path / "frontier.png"
    runmod.plot_frontier(png, outcome)
    assert png.stat().st_size > 10_000
