"""The fair baselines of bench/autoscale_sim, pinned to their upstream behaviour.

A comparison against HPA, KEDA and Knative only means something if each
baseline does what its upstream code does *and* is configured the way a
competent user would configure it for a server with hard slot limits. Each
test names the upstream file and function it reproduces. Also covered: the
per-replica balancing models, the held-out traces, the frontier arithmetic
and the predictive candidate, since the published verdicts rest on them.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bench.autoscale_sim import run as runmod
from bench.autoscale_sim.model import ClusterView, ServingModel, simulate
from bench.autoscale_sim.policies import (
    HPAController,
    HPAPolicy,
    KEDAPolicy,
    KPAPolicy,
    PredictiveTurnpikePolicy,
    Prometheus,
    ScriptedPolicy,
    StaticPolicy,
    external_per_pod_replicas,
    kpa_target,
    plain_metric_replicas,
    turnpike_params,
)
from bench.autoscale_sim.traces import (
    HELD_OUT,
    TRACES,
    constant_trace,
    make_trace,
    step_trace,
)


def view(
    now: float,
    *,
    ready: int,
    loading: int = 0,
    queue: int = 0,
    busy: tuple[int, ...] = (),
    queues: tuple[int, ...] = (),
    area: float = 0.0,
) -> ClusterView:
    return ClusterView(
        now=now,
        spec_replicas=ready + loading,
        ready=tuple(range(ready)),
        loading=tuple(range(ready, ready + loading)),
        queue=queue,
        in_service=sum(busy),
        concurrency_area=area,
        busy=busy,
        queues=queues,
    )


# --------------------------------------------------------------------------- #
# HPA (kubernetes/kubernetes pkg/controller/podautoscaler)


def test_hpa_pods_metric_ratio_rule_and_tolerance() -> None:
    """replica_calculator.go ``GetMetricReplicas`` → ``calcPlainMetricReplicas``:
    desired = ceil(mean per-pod usage / target × pods with metrics); no change
    while |ratio - 1| <= 0.1 (``--horizontal-pod-autoscaler-tolerance``)."""
    hpa = HPAController(min_replicas=1, max_replicas=50)
    # 4 pods at 8 in flight + queued each against 5.6 (70 % of 8 slots): ratio 1.43.
    got = plain_metric_replicas(
        current=4,
        metrics=dict.fromkeys(range(4), 8000),
        missing=[],
        target_milli=5600,
        controller=hpa,
    )
    assert got == math.ceil(8 / 5.6 * 4) == 6
    # 6.0 against 5.6: ratio 1.07, inside the tolerance.
    same = plain_metric_replicas(
        current=4,
        metrics=dict.fromkeys(range(4), 6000),
        missing=[],
        target_milli=5600,
        controller=hpa,
    )
    assert same == 4


def test_hpa_counts_loading_pods_against_the_direction_of_the_change() -> None:
    """replica_calculator.go ``calcPlainMetricReplicas``, missing pods: on a
    scale-up they count as 0, on a scale-down as 100 % of the target, and a
    change that this reverses (or brings within tolerance) is dropped."""
    hpa = HPAController(min_replicas=1, max_replicas=50)
    # Up: 2 ready at 11.2 (2× target), 2 loading counted as 0 → ratio 1.0 → hold.
    up = plain_metric_replicas(
        current=4,
        metrics={0: 11200, 1: 11200},
        missing=[2, 3],
        target_milli=5600,
        controller=hpa,
    )
    assert up == 4
    # Up with 1 loading pod: (11.2 + 11.2 + 0) / 3 = 7.47, ratio 1.33 over 3 pods → 4.
    up1 = plain_metric_replicas(
        current=3, metrics={0: 11200, 1: 11200}, missing=[2], target_milli=5600, controller=hpa
    )
    assert up1 == math.ceil((11200 * 2 // 3) / 5600 * 3) == 4


def test_hpa_scale_down_stabilization_is_the_max_of_300s() -> None:
    """horizontal.go ``stabilizeRecommendationWithBehaviors``: the scale-down
    recommendation is the highest of the last ``stabilizationWindowSeconds``
    (default 300) and the scale-up window is 0 (act at once)."""
    hpa = HPAController(min_replicas=1, max_replicas=50)
    assert hpa.reconcile(0.0, 4, 10) == 8  # up at once (rate-limited, below)
    held = [hpa.reconcile(t, 8, 3) for t in np.arange(15.0, 300.0, 15.0)]
    assert held == [8] * len(held)  # 10 was recommended < 300 s ago: capped by current 8
    assert hpa.reconcile(301.0, 8, 3) == 3


def test_hpa_default_scale_up_rate_is_max_of_100_percent_or_4_pods_per_15s() -> None:
    """horizontal.go ``calculateScaleUpLimitWithScalingRules`` with the default
    behavior (``Percent 100 / 15 s``, ``Pods 4 / 15 s``, ``selectPolicy Max``),
    counted from the replica count at the start of the period."""
    hpa = HPAController(min_replicas=1, max_replicas=100)
    assert hpa.reconcile(0.0, 2, 40) == 6  # 2 + 4 pods beats 200 % of 2
    assert hpa.reconcile(10.0, 6, 40) == 6  # same period: already +4
    assert hpa.reconcile(16.0, 6, 40) == 12  # new period: 100 % of 6


def test_hpa_reads_pending_plus_executing_per_pod_when_configured_fairly() -> None:
    """The fair HPA's metric is Triton's pending + executing per pod (through
    Prometheus and the adapter), not the queue alone: a full replica with an
    empty queue reads 8, not 0."""
    prom = Prometheus(15.0, metric="concurrency")
    prom.advance(view(0.0, ready=2, queue=0, busy=(8, 3)))
    assert prom.per_pod([0, 1]) == {0: 8.0, 1: 3.0}
    queue_only = Prometheus(15.0)
    queue_only.advance(view(0.0, ready=2, queue=0, busy=(8, 3)))
    assert queue_only.per_pod([0, 1]) == {0: 0.0, 1: 0.0}
    # Per-pod queues (a plain Service) are read per pod, not spread evenly.
    per_pod = Prometheus(15.0, metric="concurrency")
    per_pod.advance(view(0.0, ready=2, queue=5, busy=(8, 8), queues=(5, 0)))
    assert per_pod.per_pod([0, 1]) == {0: 13.0, 1: 8.0}


def test_fair_hpa_configs_and_pipelines() -> None:
    """The runner's fair HPA is a Pods metric on pending + executing at 70/80 %
    of the slots, with the usual pipeline (Prometheus 15 s scrape, HPA 15 s
    ``--horizontal-pod-autoscaler-sync-period``, syncs mid-way between
    scrapes) or a 2 s direct scrape; misconfigured variants say so."""
    cfg = runmod.Config()
    usual = runmod.make_policy(runmod.Spec("hpa", 0.7), cfg)
    direct = runmod.make_policy(runmod.Spec("hpa", 0.8, direct=True), cfg)
    assert isinstance(usual, HPAPolicy) and isinstance(direct, HPAPolicy)
    assert usual.target_milli == 5600 and direct.target_milli == 6400
    assert usual.prometheus.metric == "concurrency"
    assert (usual.sync_s, usual.next_sync, usual.prometheus.interval_s) == (15.0, 7.5, 15.0)
    assert (direct.sync_s, direct.next_sync, direct.prometheus.interval_s) == (2.0, 0.0, 2.0)
    labels = [s.label for s in runmod.MISCONFIGURED]
    assert all("misconfigured" in label for label in labels)
    assert {s.group for s in runmod.FAIR} == {"fair"}
    assert len(runmod.FAIR) == 12  # HPA, KEDA × 2 pipelines × 2 targets + KPA × 2 × 2


# --------------------------------------------------------------------------- #
# KEDA (kedacore/keda pkg/scalers/prometheus_scaler.go + the HPA)


def test_keda_average_value_target_divides_the_total_by_the_threshold() -> None:
    """prometheus_scaler.go ``GetMetricSpecForScaling`` publishes an External
    metric with an AverageValue target = threshold (``GetMetricTargetMili``);
    the HPA then runs replica_calculator.go ``GetExternalPerPodMetricReplicas``:
    ceil(total / threshold), tolerance on total / (threshold × replicas)."""
    hpa = HPAController(min_replicas=1, max_replicas=50)
    # 60 in flight + queued over 6 replicas at threshold 5.6: ceil(10.7) = 11.
    assert (
        external_per_pod_replicas(
            status_replicas=6, usage_milli=60000, target_milli=5600, controller=hpa
        )
        == 11
    )
    # 35 over 6 at 5.6: ratio 1.04, within tolerance.
    assert (
        external_per_pod_replicas(
            status_replicas=6, usage_milli=35000, target_milli=5600, controller=hpa
        )
        == 6
    )


def test_keda_fair_query_sums_pending_and_executing_over_ready_pods() -> None:
    """The fair KEDA query is ``sum(pending + executing)``; loading pods have no
    series yet but count in the HPA's status replicas (External metric)."""
    keda = KEDAPolicy(
        target=5.6,
        min_replicas=1,
        max_replicas=50,
        sync_offset_s=0.0,
        prometheus=Prometheus(2.0, metric="concurrency"),
    )
    # 2 ready with 8 busy + 6 queued each (28), 1 loading: ceil(28 / 5.6) = 5.
    out = keda.tick(view(0.0, ready=2, loading=1, queue=12, busy=(8, 8)))
    assert out == 5


# --------------------------------------------------------------------------- #
# Knative KPA (knative/serving)


def test_kpa_target_is_container_concurrency_times_utilization_clamped() -> None:
    """pkg/reconciler/autoscaling/resources/target.go ``ResolveMetricTarget``:
    target = max(1, min(annotation, containerConcurrency) × utilisation); the
    default utilisation (config-autoscaler ``container-concurrency-target-percentage``)
    is 70 %."""
    assert kpa_target(8, 0.7) == pytest.approx(5.6)
    assert kpa_target(8, 0.8) == pytest.approx(6.4)
    assert kpa_target(8, 1.0, annotation=12.0) == 8.0  # clamped to the slots
    assert kpa_target(0, 1.0, annotation=12.0) == 12.0  # cc unset: nothing clamps
    assert kpa_target(1, 0.5) == 1.0  # never below 1
    fair = runmod.make_policy(runmod.Spec("kpa", 0.7), runmod.Config())
    assert isinstance(fair, KPAPolicy) and fair.target == pytest.approx(5.6)


def _feed(kpa: KPAPolicy, start: int, levels: list[float], ready: int, area: float) -> float:
    for i, level in enumerate(levels):
        area += level
        kpa.tick(view(float(start + i), ready=ready, area=area))
    return area


def test_kpa_scale_down_delay_holds_the_max_of_the_window() -> None:
    """pkg/autoscaler/scaling/autoscaler.go ``Scale``: with ``scale-down-delay``
    the result is the maximum desired count of the delay window
    (``delayWindow.Current()``), so a drop takes effect only after it."""
    kpa = KPAPolicy(target=5.6, min_replicas=1, max_replicas=50, scale_down_delay_s=300.0)
    area = _feed(kpa, 1, [56.0] * 60, ready=10, area=0.0)
    assert kpa.scale(60.0, 10) == 10
    area = _feed(kpa, 61, [5.6] * 120, ready=10, area=area)
    assert kpa.scale(180.0, 10) == 10  # stable window dropped, delay holds
    no_delay = KPAPolicy(target=5.6, min_replicas=1, max_replicas=50)
    a2 = _feed(no_delay, 1, [56.0] * 60, ready=10, area=0.0)
    _feed(no_delay, 61, [5.6] * 120, ready=10, area=a2)
    assert no_delay.scale(180.0, 10) == 5  # halved: max-scale-down-rate 2 per tick
    _feed(kpa, 181, [5.6] * 200, ready=10, area=area)
    assert kpa.scale(381.0, 10) < 10  # the 10 has left the 300 s window


def test_kpa_max_scale_up_rate_bounds_growth_per_tick() -> None:
    """autoscaler.go ``Scale``: desired is clamped to ceil(max-scale-up-rate ×
    ready pods) (config-autoscaler default 1000, i.e. unbounded in practice)."""
    slow = KPAPolicy(target=5.6, min_replicas=1, max_replicas=100, max_scale_up_rate=2.0)
    _feed(slow, 1, [112.0] * 10, ready=3, area=0.0)
    assert slow.scale(10.0, 3) == 6  # wants 20, ceil(2 × 3)
    fast = KPAPolicy(target=5.6, min_replicas=1, max_replicas=100)
    _feed(fast, 1, [112.0] * 10, ready=3, area=0.0)
    assert fast.scale(10.0, 3) == 20


# --------------------------------------------------------------------------- #
# Balancing models


TWO = ServingModel(slots=2, load_s=10.0, sample_s=1.0, balancing="random")


def test_per_pod_queues_wait_beside_free_slots_but_the_shared_queue_never_does() -> None:
    # 3.6 replicas of work on 5 replicas of 2 slots: never short of slots in total.
    trace = constant_trace(3.6, 600, seed=11)
    waits = {}
    for balancing in ("shared", "random", "round-robin"):
        model = replace(TWO, balancing=balancing)
        r = simulate(trace, StaticPolicy(5), model, initial_replicas=5)
        assert r.total_arrived == r.completed + r.in_service_at_end + r.queued_at_end
        waits[balancing] = float(np.mean(r.waits > 1e-9))
    assert waits["shared"] < 0.02
    assert waits["random"] > 3 * waits["shared"] + 0.02
    assert waits["round-robin"] < waits["random"]  # turns spread better than dice


def test_a_removed_replica_serves_its_own_queue_before_freeing_its_gpu() -> None:
    trace = step_trace([(60, 12.0), (120, 2.0)], seed=12)  # 3 × 2 slots overloaded
    policy = ScriptedPolicy([(0.0, 3), (50.0, 1)])
    r = simulate(trace, policy, replace(TWO, balancing="round-robin"), initial_replicas=3)
    assert r.total_arrived == r.completed + r.in_service_at_end + r.queued_at_end
    s = r.series
    at = {round(t): (sp, h) for t, sp, h in zip(s.t, s.spec, s.holding, strict=True)}
    assert at[51][0] == 1 and at[51][1] == 3  # removed, still draining their queues
    assert at[170] == (1, 1)
    assert np.all(np.isfinite(r.waits))


# --------------------------------------------------------------------------- #
# Held-out traces


def test_held_out_family_is_fixed_deterministic_and_of_another_seed_family() -> None:
    for name in HELD_OUT:
        a = make_trace(name, duration_s=900, warmup_s=60, seed=7)
        assert a == make_trace(name, duration_s=900, warmup_s=60, seed=7)
        assert a.arrivals != make_trace(name, duration_s=900, warmup_s=60, seed=8).arrivals
        assert list(a.arrivals) == sorted(a.arrivals)
    assert not set(HELD_OUT) & set(TRACES)


def test_held_out_shapes_have_their_documented_statistics() -> None:
    flash = make_trace("flash-crowd", duration_s=3600, seed=7)
    assert max(flash.rates) == pytest.approx(4 * flash.rates[0])
    batch = np.asarray(make_trace("periodic-batch", duration_s=3600, seed=7).rates)
    edges = np.flatnonzero(np.diff(batch) > 0)
    assert set(np.diff(edges).tolist()) == {300}  # a fixed 5 min period
    azure = make_trace("azure-like", duration_s=3600, seed=7)
    gaps = np.diff(np.asarray(azure.arrivals))
    assert gaps.std() / gaps.mean() > 1.5  # far burstier than Poisson (CV 1)
    service = np.asarray(azure.service_s)
    assert service.std() / service.mean() == pytest.approx(0.6, rel=0.1)
    assert azure.requests == pytest.approx(sum(azure.rates), rel=0.05)


# --------------------------------------------------------------------------- #
# Frontier arithmetic, the verdict, the runner


def test_frontier_interpolates_on_pareto_points_only() -> None:
    pts = [(0.90, 10.0), (0.95, 14.0), (0.93, 20.0), (1.00, 18.0)]
    assert runmod.pareto(pts) == [(0.90, 10.0), (0.95, 14.0), (1.00, 18.0)]
    assert runmod.cost_at(pts, 0.975) == pytest.approx(16.0)
    assert runmod.cost_at(pts, 0.80) == 10.0
    assert runmod.cost_at([(0.9, 5.0)], 0.99) is None


def _row(policy: str, slo: float, hours: float, group: str = "fair") -> runmod.Row:
    return runmod.Row(
        "t", policy, group, "shared", 48, slo, slo >= 0.99, 0.0, 0.0, hours, hours, 0, 0, 0
    )


def test_best_fair_baseline_and_verdict() -> None:
    rows = [
        _row("a", 1.0, 12.0),
        _row("b", 0.995, 10.0),
        _row("c", 0.9, 5.0),
        _row("m", 1.0, 1.0, "misconfigured"),
    ]
    best = runmod.best_fair(rows)
    assert best is not None and best.policy == "b"  # cheapest meeting the SLO
    assert runmod.verdict(_row("tp", 0.996, 10.2, "turnpike"), best) == "PASS"
    assert runmod.verdict(_row("tp", 0.98, 9.0, "turnpike"), best).startswith("LOSES")
    assert "replica-h +20%" in runmod.verdict(_row("tp", 1.0, 12.0, "turnpike"), best)


def test_runner_reuses_a_run_at_larger_max_only_when_it_never_hit_the_max() -> None:
    cfg = replace(runmod.QUICK, duration_s=240.0, warmup_s=60.0)
    runner = runmod.Runner(cfg)
    spec = runmod.Spec("kpa", 0.7)
    small = runner.run("steady", spec, cfg)
    assert small.peak_spec < cfg.max_replicas
    big_cfg = replace(cfg, max_replicas=96)
    reused = runner.run("steady", spec, big_cfg)
    assert runner.reused == 1
    direct = runmod.Runner(cfg).run("steady", spec, big_cfg)
    assert replace(reused, max_replicas=0) == replace(direct, max_replicas=0)


def test_static_fleet_is_the_smallest_meeting_the_slo() -> None:
    cfg = replace(runmod.QUICK, duration_s=300.0, warmup_s=60.0, max_replicas=12)
    runner = runmod.Runner(cfg)
    best = runner.static("steady", cfg)
    assert best is not None and best.met
    n = round(best.mean_replicas)
    trace = runner.trace("steady")
    fewer = simulate(trace, StaticPolicy(n - 1), cfg.model, initial_replicas=n - 1)
    assert not fewer.meets_slo


# --------------------------------------------------------------------------- #
# The predictive candidate


def test_predictive_candidate_scales_ahead_on_a_ramp_but_not_on_noise() -> None:
    params = turnpike_params(40)
    pred = PredictiveTurnpikePolicy(params, slots=8, horizon_s=90.0)
    t = 0.0
    rng = np.random.default_rng(3)
    # Flat, noisy load at 24 in flight on 4 replicas: no trend.
    for _ in range(30):
        busy = int(rng.poisson(24))
        pred.tick(view(t, ready=4, busy=(busy // 4,) * 4))
        t += 2.0
    assert pred.forecast() is None
    # Learn the capacity (a queue beside full slots), then ramp +1 per second.
    level = 32.0
    out: int | None = None
    for _ in range(30):
        level += 2.0
        queue = max(0, int(level) - 32)
        out = pred.tick(view(t, ready=4, queue=queue, busy=(8, 8, 8, 8)))
        t += 2.0
    ahead = pred.forecast()
    assert ahead is not None and ahead > level + 60  # ~1 req/s × 90 s ahead
    assert out is not None and out >= 8  # at least the 2× bound of 4 ready
