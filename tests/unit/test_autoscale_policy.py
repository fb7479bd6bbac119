"""The scaling policy over scripted sample sequences.

Every test drives the pure ``decide`` with a simulated clock: one call per
2 s scrape, as the controller would. Nothing sleeps.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from turnpike.api.modeldeployment import Autoscaling
from turnpike.autoscale.history import History
from turnpike.autoscale.policy import BudgetCap, Decision, Params, decide
from turnpike.autoscale.signal import Observation

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SCRAPE = 2.0
PARAMS = Params(
    min_replicas=1,
    max_replicas=20,
    target=4.0,
    tolerance=0.1,
    scrape_interval_s=SCRAPE,
    panic_window_s=6.0,
    stabilization_window_s=120.0,
    max_scale_up_rate=2.0,
    max_scale_down_step=1,
)


def observe(
    t: float, queue: float, *, pods: int = 4, failed: int = 0, wait_ms: float | None = None
) -> Observation:
    names = tuple(f"pod-{i}" for i in range(pods))
    ok = names[: pods - failed]
    return Observation(
        time=t,
        queue=queue,
        queue_time_ms=wait_ms,
        pods=names,
        queues={name: queue / len(ok) for name in ok},
        failed={name: "timeout after 1s" for name in names[pods - failed :]},
    )


@dataclass
class Sim:
    """The controller loop, minus I/O: pods become ready instantly unless told."""

    params: Params = PARAMS
    replicas: int = 4
    history: History = field(default_factory=History)
    t: float = T0
    decisions: list[Decision] = field(default_factory=list)

    def step(
        self,
        queue: float | None,
        *,
        ready: int | None = None,
        starting: int = 0,
        budget: int | BudgetCap | None = None,
        obs: Observation | None = None,
        wait_ms: float | None = None,
    ) -> Decision:
        self.t += SCRAPE
        if obs is None and queue is not None:
            obs = observe(self.t, queue, pods=max(self.replicas, 1), wait_ms=wait_ms)
        decision = decide(
            self.params,
            current=self.replicas,
            ready=self.replicas if ready is None else ready,
            starting=starting,
            history=self.history,
            now=self.t,
            observation=obs,
            budget=budget,
        )
        self.history = decision.history
        self.replicas = decision.replicas
        self.decisions.append(decision)
        return decision

    def run(self, queues: Iterable[float | None]) -> list[Decision]:
        return [self.step(q) for q in queues]


def warm(sim: Sim, queue: float, seconds: float = 130) -> Sim:
    """Fill a full stabilization window at a steady queue."""
    for _ in range(int(seconds / SCRAPE)):
        sim.step(queue)
    return sim


def settled_low(replicas: int, queue: float) -> Sim:
    """A window full of low samples at ``replicas``, due to scale down next tick.

    Built with minReplicas pinned so the warm-up itself cannot scale down.
    """
    sim = warm(Sim(params=replace(PARAMS, min_replicas=replicas), replicas=replicas), queue)
    sim.params = PARAMS
    return sim


def test_settled_low_would_scale_down_on_the_next_fresh_sample() -> None:
    sim = settled_low(10, 2.0)
    assert sim.step(2.0).replicas == 9


# --- steady, noise ------------------------------------------------------------


def test_steady_load_at_target_never_changes() -> None:
    sim = Sim(replicas=4)
    decisions = sim.run([16.0] * 200)
    assert {d.replicas for d in decisions} == {4}
    assert all(d.direction == "hold" and not d.changed for d in decisions)
    assert decisions[-1].reason == (
        "queue 16 over 4 replicas (4/replica) within target 4±10%: hold 4"
    )
    assert decisions[-1].per_replica == 4.0


def test_noise_around_target_does_not_flap() -> None:
    # 14.4..17.6 is the ±10% band for 4 replicas at target 4. Occasional
    # samples outside it (14 below, 18 and 19 above) must not move anything.
    pattern = [15, 17, 16, 17.5, 14, 16, 18, 15, 16.5, 14.5, 19, 15, 17, 16]
    sim = warm(Sim(replicas=4), 16)
    decisions = sim.run(pattern * 15)
    assert {d.replicas for d in decisions} == {4}
    above = [d for d in decisions if "> target" in d.reason]
    assert above and all("panic-window mean" in d.reason for d in above)


# --- burst --------------------------------------------------------------------


def test_first_sample_of_a_burst_scales_up_bounded_by_rate() -> None:
    sim = Sim(replicas=4)
    d = sim.step(37)
    assert (d.current, d.replicas, d.direction) == (4, 8, "up")
    assert d.limited_by_rate
    assert d.reason == (
        "queue 37 over 4 replicas (9.2/replica) > target 4±10%: scale up 4→8 "
        "(panic window 6s; wanted 10, maxScaleUpRate 2× 4 ready)"
    )


def test_burst_scales_up_within_the_panic_window() -> None:
    sim = warm(Sim(replicas=4), 16)
    burst_start = sim.t + SCRAPE
    ups = []
    for _ in range(10):
        d = sim.step(60, ready=sim.replicas)  # pods ready at once: test reaction only
        if d.direction == "up":
            ups.append((sim.t - burst_start, d))
    assert ups[0][0] == 0, "the first burst sample already moves"
    assert all(later.replicas <= 2 * later.current for _, later in ups)
    reached = next(t for t, d in ups if d.replicas >= 15)
    assert reached <= PARAMS.panic_window_s
    assert sim.replicas == 15  # ceil(60 / 4)
    assert "(panic window 6s" in ups[0][1].reason


def test_single_spike_that_already_drained_is_not_chased() -> None:
    sim = warm(Sim(replicas=4), 16)
    sim.step(16)
    d = sim.step(16)  # the spike below happened between scrapes and is gone
    assert d.replicas == 4
    spike = sim.step(60)
    after = sim.step(16)
    assert spike.direction == "up"  # a real 4x sample is a burst...
    assert after.direction == "hold"  # ...but its echo in the panic mean is not


def test_small_spike_is_absorbed_by_the_panic_mean() -> None:
    sim = warm(Sim(replicas=4), 16)
    d = sim.step(21)  # 5.25/replica, above band, but the 6 s mean is 17.25
    assert d.direction == "hold"
    assert "panic-window mean 17.2" in d.reason


# --- starting replicas --------------------------------------------------------


def test_starting_replicas_count_as_capacity() -> None:
    sim = Sim(replicas=4)
    sim.step(40)  # 4 -> 8, four pods start loading the model
    assert sim.replicas == 8
    # 30 queued over 8 spec'd replicas is 3.75 each: within the band even
    # though only 4 serve. Dividing by ready replicas would say 7.5 and scale.
    for _ in range(5):
        d = sim.step(30, ready=4, starting=4)
        assert d.replicas == 8
    assert d.per_replica == pytest.approx(3.75)


def test_backlog_growing_while_models_load_does_not_stampede() -> None:
    sim = Sim(replicas=4)
    sim.step(40)
    assert sim.replicas == 8
    queue = 40.0
    for _ in range(60):  # two minutes of loading, queue keeps climbing
        queue += 5
        d = sim.step(queue, ready=4, starting=4)
        assert d.replicas == 8
    assert d.limited_by_rate
    assert "waiting for 4 starting replicas" in d.reason
    # Once they are ready, growth resumes, again bounded by 2x ready.
    d = sim.step(queue, ready=8)
    assert d.replicas == 16


# --- decay --------------------------------------------------------------------


def test_decay_scales_down_only_after_the_window_one_step_at_a_time() -> None:
    # One step per scale_down_period_s (60 s), not per tick: from 10 to
    # ceil(6 / 4) = 2 takes 8 steps, 7 periods after the first.
    sim = warm(Sim(replicas=10), 40)
    last_high = sim.t
    decisions = sim.run([6.0] * 300)
    times = [T0 + SCRAPE * (i + 1) for i in range(len(sim.decisions))]
    first_down = next(i for i, d in enumerate(sim.decisions) if d.direction == "down")
    assert times[first_down] - last_high > PARAMS.stabilization_window_s
    assert times[first_down] - last_high <= PARAMS.stabilization_window_s + SCRAPE
    held = [d for d in decisions if d.direction == "hold" and d.replicas == 10]
    assert held and "peaked at 40 in the last 120s" in held[0].reason
    downs = [d for d in decisions if d.direction == "down"]
    assert [d.current - d.replicas for d in downs] == [1] * 8  # step-limited
    assert sim.replicas == 2  # ceil(6 / 4)
    down_times = [t for t, d in zip(times, sim.decisions, strict=True) if d.direction == "down"]
    gaps = {round(b - a) for a, b in itertools.pairwise(down_times)}
    assert gaps == {60}  # the first sample once the last step left the period
    assert downs[0].reason == (
        "queue 6 over 10 replicas (0.6/replica) at most over the last 120s < target 4±10%: "
        "scale down 10→9 (stabilization window; wanted 2, maxScaleDownStep 1 per 60s)"
    )
    waiting = next(d for d in decisions if d.direction == "hold" and d.replicas == 9)
    assert waiting.reason == (
        "queue 6 over 9 replicas (0.7/replica) < target 4±10%: hold 9, scaled down 2s ago "
        "(maxScaleDownStep 1 per 60s)"
    )


def test_scale_down_period_zero_steps_every_decision() -> None:
    """The previous rule, kept behind scale_down_period_s=0."""
    sim = warm(Sim(params=replace(PARAMS, scale_down_period_s=0.0), replicas=10), 40)
    sim.run([6.0] * 70)
    downs = [d for d in sim.decisions if d.direction == "down"]
    assert [d.current - d.replicas for d in downs] == [1] * 8
    assert downs[0].reason.endswith("(stabilization window; wanted 2, maxScaleDownStep 1)")


def test_larger_scale_down_step() -> None:
    sim = warm(Sim(params=replace(PARAMS, max_scale_down_step=3), replicas=10), 40)
    sim.run([6.0] * 160)
    downs = [d.current - d.replicas for d in sim.decisions if d.direction == "down"]
    assert downs == [3, 3, 2]


def test_scale_down_step_is_a_budget_per_period() -> None:
    # maxScaleDownStep 3 per 60 s: a removal of 1 (minReplicas allows no
    # more) leaves 2 for the rest of the period, then the period holds.
    sim = settled_low(10, 2.0)
    sim.params = replace(PARAMS, max_scale_down_step=3, min_replicas=9)
    assert sim.step(2.0).replicas == 9
    sim.params = replace(PARAMS, max_scale_down_step=3)
    d = sim.step(2.0)
    assert d.replicas == 7 and "wanted 1, maxScaleDownStep 3 per 60s" in d.reason
    d = sim.step(2.0)
    assert d.replicas == 7 and d.reason.endswith("(maxScaleDownStep 3 per 60s)")
    sim.run([2.0] * 27)
    assert sim.replicas == 7  # 58 s after the first removal
    assert sim.step(2.0).replicas == 6  # the first removal left the period
    assert sim.step(2.0).replicas == 4  # and then the second


def test_scale_down_period_survives_a_restart() -> None:
    sim = settled_low(10, 2.0)
    assert sim.step(2.0).replicas == 9
    restored = History.from_dict(json.loads(json.dumps(sim.history.to_dict())))
    assert restored == sim.history
    sim.history = restored
    assert sim.step(2.0).replicas == 9  # 2 s after the last step: hold


def test_a_history_without_marks_has_no_recent_scale_down() -> None:
    """Histories stored before the marks existed: [dt, value, ready] entries."""
    sim = settled_low(10, 2.0)
    legacy = sim.history.to_dict()
    legacy["samples"] = [entry[:3] for entry in legacy["samples"]]
    sim.history = History.from_dict(legacy)
    assert sim.step(2.0).replicas == 9


def test_repeating_a_decision_on_the_same_scrape_reproduces_it() -> None:
    sim = settled_low(10, 2.0)
    sim.t += SCRAPE
    obs = observe(sim.t, 2.0, pods=10)
    kwargs: dict[str, Any] = {"current": 10, "ready": 10, "starting": 0, "now": sim.t}
    first = decide(sim.params, history=sim.history, observation=obs, **kwargs)
    again = decide(sim.params, history=first.history, observation=obs, **kwargs)
    assert first.replicas == again.replicas == 9
    assert again.history == first.history


def test_a_rebound_inside_the_window_restarts_the_wait() -> None:
    sim = warm(Sim(replicas=10), 40)
    sim.run([6.0] * 50)  # 100 s below target
    sim.step(40)  # back at target for one sample
    sim.run([6.0] * 59)  # 118 s since the rebound
    assert sim.replicas == 10
    sim.run([6.0] * 2)
    assert sim.replicas == 9


def test_fresh_start_waits_a_full_window_before_scaling_down() -> None:
    sim = Sim(replicas=10)  # no history: an operator that just started
    sim.run([0.0] * 60)  # samples span 118 s
    assert sim.replicas == 10
    assert sim.decisions[0].reason == (
        "queue 0 over 10 replicas (0/replica) < target 4±10%: hold 10 until metrics cover "
        "the 120s stabilization window (0s so far)"
    )
    assert sim.step(0.0).replicas == 9  # 120 s covered


def test_zero_stabilization_window_scales_down_at_once() -> None:
    sim = Sim(params=replace(PARAMS, stabilization_window_s=0), replicas=10)
    d = sim.step(6.0)
    assert (d.current, d.replicas) == (10, 9)


# --- stale, missing, partial ----------------------------------------------------


def test_missing_metrics_hold_and_never_scale_down() -> None:
    sim = settled_low(10, 2.0)
    for _ in range(100):
        d = sim.step(None)
        assert d.replicas == 10 and d.metrics_stale
    assert d.reason == "no metrics: hold 10"


def test_stale_observation_holds() -> None:
    sim = warm(Sim(replicas=10), 40)
    frozen = observe(sim.t, 0.0, pods=10)  # the source stopped updating
    reasons = []
    for _ in range(80):
        d = sim.step(None, obs=frozen)
        reasons.append(d.reason)
        assert d.replicas == 10
    assert d.metrics_stale
    assert reasons[-1] == "metrics stale (160s old > 6s): hold 10"
    # The first samples were still fresh: they are recorded but within the window
    # the earlier peak of 40 holds the count.
    assert "peaked at 40" in reasons[0]


def test_gap_in_metrics_restarts_the_stabilization_window() -> None:
    sim = settled_low(10, 2.0)
    sim.run([None] * 10)  # 20 s without metrics: nobody knows what happened
    sim.run([1.0] * 60)  # 118 s of coverage after the gap
    assert sim.replicas == 10
    assert sim.decisions[-1].reason.endswith("(118s so far)")
    assert sim.step(1.0).replicas == 9


def test_all_pods_failed_is_missing_with_the_reasons() -> None:
    sim = settled_low(4, 1.0)
    d = sim.step(None, obs=observe(sim.t + SCRAPE, 0.0, pods=2, failed=2))
    assert d.metrics_stale and d.replicas == 4
    assert d.reason == (
        "no metrics (all 2 pods failed: pod-0: timeout after 1s, pod-1: timeout after 1s): hold 4"
    )


def test_no_ready_pods_is_missing() -> None:
    d = decide(
        PARAMS,
        current=2,
        ready=0,
        starting=2,
        history=History(),
        now=T0,
        observation=Observation(time=T0, queue=0.0),
    )
    assert d.replicas == 2 and d.metrics_stale
    assert d.reason == "no ready pods to read metrics from: hold 2"


def test_partial_metrics_never_scale_down() -> None:
    sim = settled_low(10, 2.0)
    for _ in range(10):
        d = sim.step(None, obs=observe(sim.t + SCRAPE, 1.0, pods=10, failed=3))
        assert d.replicas == 10 and d.metrics_partial
    assert d.reason == (
        "metrics partial (7/10 pods): queue 1 over 10 replicas (0.1/replica) < target 4±10%: "
        "hold 10, never scale down on partial metrics"
    )


def test_partial_metrics_still_scale_up_on_the_lower_bound() -> None:
    sim = warm(Sim(replicas=4), 16)
    d = sim.step(None, obs=observe(sim.t + SCRAPE, 40.0, pods=4, failed=1))
    assert d.direction == "up" and d.metrics_partial
    assert d.reason.startswith("metrics partial (3/4 pods): queue")


# --- restart ------------------------------------------------------------------


def _scenario(tail: int) -> list[float | None]:
    return (
        [16.0] * 40
        + [37.0, 50.0, 60.0, 60.0, 55.0]
        + [40.0] * 20
        + [None] * 4
        + [8.0] * 90
        + [2.0] * tail
    )


@pytest.mark.parametrize(
    ("params", "tail"),
    [(PARAMS, 30), (replace(PARAMS, stabilization_window_s=900), 500)],
    ids=["default-window", "long-window-compacted"],
)
def test_restart_round_trips_history_and_decides_identically(params: Params, tail: int) -> None:
    uninterrupted = Sim(params=params, replicas=4)
    uninterrupted.run(_scenario(tail))

    restarted = Sim(params=params, replicas=4)
    for queue in _scenario(tail):
        # A new leader reads the history back from the object's status.
        stored = json.loads(json.dumps(restarted.history.to_dict()))
        restarted = Sim(
            params=params,
            replicas=restarted.replicas,
            history=History.from_dict(stored),
            t=restarted.t,
            decisions=restarted.decisions,
        )
        restarted.step(queue)

    assert [(d.replicas, d.reason) for d in restarted.decisions] == [
        (d.replicas, d.reason) for d in uninterrupted.decisions
    ]
    assert restarted.history == uninterrupted.history
    assert {d.direction for d in uninterrupted.decisions} == {"up", "down", "hold"}
    longest = max(len(d.history.samples) for d in uninterrupted.decisions)
    assert longest <= 200


def test_restart_in_the_middle_of_a_window_keeps_waiting_where_it_left_off() -> None:
    sim = warm(Sim(replicas=10), 40)
    sim.run([6.0] * 30)  # 60 s into the window
    stored = json.loads(json.dumps(sim.history.to_dict()))
    resumed = Sim(replicas=10, history=History.restore(stored, "queueDepth"), t=sim.t)
    resumed.run([6.0] * 30)
    assert resumed.replicas == 10  # not early...
    assert resumed.step(6.0).replicas == 9  # ...and not a full window late


def test_deciding_twice_on_one_observation_is_idempotent() -> None:
    sim = warm(Sim(replicas=4), 16)
    obs = observe(sim.t + SCRAPE, 30.0)
    first = decide(
        PARAMS, current=4, ready=4, starting=0, history=sim.history, now=obs.time, observation=obs
    )
    again = decide(
        PARAMS,
        current=4,
        ready=4,
        starting=0,
        history=first.history,
        now=obs.time,
        observation=obs,
    )
    assert first.history == again.history
    assert (first.replicas, first.reason) == (again.replicas, again.reason)


# --- bounds: budget, min, max -------------------------------------------------


def test_budget_caps_growth_and_says_so() -> None:
    sim = Sim(replicas=4)
    d = sim.step(60, budget=6)
    assert (d.replicas, d.limited_by_budget) == (6, True)
    assert d.reason.endswith("; capped at GPU budget 6: 4→6")


def test_budget_callable_gets_the_wanted_count() -> None:
    asked: list[int] = []

    def cap(wanted: int) -> int | None:
        asked.append(wanted)
        return 5

    d = Sim(replicas=4).step(60, budget=cap)
    assert asked == [8] and d.replicas == 5 and d.limited_by_budget


def test_budget_below_current_holds_and_never_removes_running_replicas() -> None:
    sim = warm(Sim(replicas=8), 32)
    d = sim.step(80, budget=4)
    assert (d.replicas, d.limited_by_budget) == (8, True)
    assert d.reason.endswith("; capped at GPU budget 4: hold 8")
    d = sim.step(32, budget=4)  # within band: nothing to cap
    assert (d.replicas, d.limited_by_budget) == (8, False)


def test_decision_as_status_record() -> None:
    d = Sim(replicas=4).step(37)
    record = d.as_status("2026-01-01T00:00:02Z")
    assert record.to_k8s() == {
        "time": "2026-01-01T00:00:02Z",
        "fromReplicas": 4,
        "toReplicas": 8,
        "reason": d.reason,
    }


def test_no_budget_means_no_cap() -> None:
    assert Sim(replicas=4).step(60, budget=None).replicas == 8
    assert Sim(replicas=4).step(60, budget=lambda wanted: None).replicas == 8


def test_max_replicas_clamps_scale_up() -> None:
    sim = Sim(params=replace(PARAMS, max_replicas=6), replicas=4)
    d = sim.step(60)
    assert (d.replicas, d.clamped) == (6, True)
    assert d.reason.endswith("; limited to maxReplicas: 4→6")


def test_min_replicas_clamps_scale_down_and_zero() -> None:
    params = replace(PARAMS, min_replicas=3)
    sim = warm(Sim(params=params, replicas=4), 16)
    sim.run([0.0] * 70)
    assert sim.replicas == 3
    d = Sim(params=params, replicas=0).step(None)
    assert (d.replicas, d.clamped, d.metrics_stale) == (3, True, True)
    assert d.reason == "no metrics: hold 0; raised to minReplicas: 0→3"


def test_lowered_max_applies_even_without_metrics() -> None:
    d = Sim(params=replace(PARAMS, max_replicas=5), replicas=9).step(None)
    assert d.replicas == 5 and d.clamped and d.metrics_stale


def test_budget_wins_over_min_replicas() -> None:
    d = Sim(params=replace(PARAMS, min_replicas=3), replicas=1).step(None, budget=2)
    assert d.replicas == 2 and d.limited_by_budget and d.clamped


# --- queue time ---------------------------------------------------------------


QT = replace(PARAMS, metric="queueTime", target=500.0)


def test_queue_time_weighs_the_mean_wait_by_serving_replicas() -> None:
    d = Sim(params=QT, replicas=4).step(30, wait_ms=900.0)
    assert (d.replicas, d.direction) == (8, "up")  # ceil(4 x 900 / 500) = 8
    assert d.reason.startswith("queue wait 900ms per replica over 4 replicas > target 500ms±10%")


def test_queue_time_unknown_while_requests_wait_is_missing() -> None:
    d = Sim(params=QT, replicas=4).step(30, wait_ms=None)
    assert d.metrics_stale and d.replicas == 4
    assert "no request completed" in d.reason


def test_queue_time_idle_counts_as_zero_wait() -> None:
    sim = Sim(params=QT, replicas=4)
    sim.run([0.0] * 61)
    assert sim.replicas == 3
    assert not sim.decisions[-1].metrics_stale


def test_history_of_another_metric_is_discarded() -> None:
    depth = settled_low(10, 2.0)
    sim = Sim(params=QT, replicas=10, history=depth.history, t=depth.t)
    d = sim.step(0.0, wait_ms=10.0)
    assert d.replicas == 10 and d.history.metric == "queueTime"
    assert len(d.history.samples) == 1


# --- parameters ---------------------------------------------------------------


def test_params_from_the_api_defaults() -> None:
    p = Params.from_spec(Autoscaling(), min_replicas=1, max_replicas=8)
    assert p == Params(min_replicas=1, max_replicas=8)
    assert p.stale_limit_s == 6.0
    assert Params.from_spec(Autoscaling(metric="queueTime"), min_replicas=2, max_replicas=None) == (
        Params(min_replicas=2, max_replicas=2, metric="queueTime")
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"min_replicas": 3, "max_replicas": 2},
        {"target": 0},
        {"tolerance": 1.0},
        {"max_scale_up_rate": 1.0},
        {"max_scale_down_step": 0},
        {"scrape_interval_s": 0},
        {"stale_after_s": 0},
    ],
)
def test_params_reject_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(PARAMS, **bad)


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        decide(PARAMS, current=-1, ready=0, starting=0, history=History(), now=T0, observation=None)


# --- capacity guard (in-flight) -----------------------------------------------


def busy(t: float, queue: float, in_flight: float | None, *, pods: int) -> Observation:
    return replace(observe(t, queue, pods=pods), in_flight=in_flight)


def run_busy(sim: Sim, samples: Iterable[tuple[float, float | None]]) -> list[Decision]:
    out = []
    for queue, in_flight in samples:
        obs = busy(sim.t + SCRAPE, queue, in_flight, pods=sim.replicas)
        out.append(sim.step(None, obs=obs))
    return out


def test_slots_are_learned_while_requests_wait() -> None:
    sim = Sim(params=replace(PARAMS, min_replicas=10), replicas=10)
    run_busy(sim, [(0.0, 30.0)] * 3)
    assert sim.history.slots is None  # never saturated: capacity unknown
    run_busy(sim, [(2.0, 10.0)])  # a queue at the end of a mostly idle interval
    assert sim.history.slots is None
    run_busy(sim, [(2.0, 80.0)])  # requests waited throughout beside 80 busy: 8 per replica
    assert sim.history.slots == 8.0
    run_busy(sim, [(0.0, 20.0)] * 100)  # carried forward past the window
    assert sim.history.slots == 8.0
    assert History.from_dict(json.loads(json.dumps(sim.history.to_dict()))) == sim.history


def test_a_fleet_with_busy_slots_and_no_queue_is_not_idle() -> None:
    # 8 slots per replica (seen saturated once), 44 in flight and no queue:
    # 44 / (0.8 × 8) needs 7 replicas, so 10 go down to 7 and no further,
    # where the queue-only rule would go to minReplicas.
    sim = Sim(params=replace(PARAMS, min_replicas=10, max_replicas=10), replicas=10)
    run_busy(sim, [(2.0, 80.0)] * 2)  # saturated through an interval
    sim.params = PARAMS
    decisions = run_busy(sim, [(0.0, 44.0)] * 400)
    assert sim.replicas == 7
    holds = [d for d in decisions if d.replicas == 7 and d.direction == "hold"]
    assert holds[-1].reason == (
        "queue 0 over 7 replicas (0/replica) < target 4±10%: hold 7; 44 in flight at most "
        "over the last 120s need 7 replicas at 80% of 8 slots each"
    )
    downs = [d for d in decisions if d.direction == "down"]
    assert [d.replicas for d in downs] == [9, 8, 7]


def test_the_guard_follows_the_in_flight_peak_of_the_window() -> None:
    sim = Sim(params=replace(PARAMS, min_replicas=10, max_replicas=10), replicas=10)
    run_busy(sim, [(2.0, 80.0)] * 2)
    sim.params = PARAMS
    run_busy(sim, [(0.0, 20.0)] * 60 + [(0.0, 60.0)] + [(0.0, 20.0)] * 50)
    # 60 in flight 100 s ago needs ceil(60 / 6.4) = 10: still held at 10.
    assert sim.replicas == 10
    run_busy(sim, [(0.0, 20.0)] * 11)  # the peak leaves the 120 s window
    assert sim.replicas == 9


def test_the_guard_needs_in_flight_and_a_learned_capacity() -> None:
    # Without in-flight readings (a source that has none) the queue rule
    # alone decides, as before.
    sim = settled_low(10, 2.0)
    assert sim.step(2.0).replicas == 9
    # Capacity never seen: in-flight alone cannot tell how busy replicas are.
    sim = Sim(params=replace(PARAMS, min_replicas=10), replicas=10)
    run_busy(sim, [(0.0, 70.0)] * 65)
    sim.params = PARAMS
    assert run_busy(sim, [(0.0, 70.0)])[0].replicas == 9


def test_the_guard_can_be_switched_off() -> None:
    sim = Sim(params=replace(PARAMS, min_replicas=10, capacity_utilization=None), replicas=10)
    run_busy(sim, [(2.0, 80.0)] + [(0.0, 70.0)] * 64)
    sim.params = replace(PARAMS, capacity_utilization=None)
    assert run_busy(sim, [(0.0, 70.0)])[0].replicas == 9


# --- scale-up base ------------------------------------------------------------


def test_scale_up_bound_counts_ready_replicas_only_by_default() -> None:
    sim = Sim(replicas=8)
    d = sim.step(400.0, ready=2, starting=6)
    assert d.replicas == 8 and d.limited_by_rate  # 2 × 2 ready < 8 already asked


def test_spec_scale_up_base_doubles_what_was_asked_once_per_period() -> None:
    sim = Sim(params=replace(PARAMS, scale_up_base="spec", scale_up_period_s=15.0), replicas=4)
    assert sim.step(400.0, ready=4).replicas == 8
    # The 4 new replicas are loading; for 15 s the base stays at 4.
    for _ in range(7):
        assert sim.step(400.0, ready=4, starting=4).replicas == 8
    assert sim.step(400.0, ready=4, starting=4).replicas == 16  # 16 s later


# --- Issue 11: values no queue can have hold the count, never crash ---------------


@pytest.mark.parametrize(
    "queue", [1e308 + 1e308, float("nan"), float("-inf"), -1.0, 2 * 1e308, 1e300]
)
def test_unusable_metric_values_hold_and_say_so(queue: float) -> None:
    # Defect 6: two pods reporting 1e308 summed to inf and decide() raised
    # OverflowError in _ceil; NaN and -inf crashed _fmt.
    sim = warm(Sim(), 16.0)
    for metric in ("queueDepth", "queueTime"):
        params = replace(PARAMS, metric=metric)
        obs = observe(sim.t + SCRAPE, queue, wait_ms=queue)
        d = decide(
            params,
            current=4,
            ready=4,
            starting=0,
            history=sim.history,
            now=sim.t + SCRAPE,
            observation=obs,
        )
        assert d.replicas == 4 and not d.changed
        assert d.metrics_stale and "metrics unusable" in d.reason


def test_a_tiny_target_saturates_instead_of_overflowing() -> None:
    params = replace(PARAMS, target=5e-324, max_replicas=10_000)
    d = decide(
        params,
        current=4,
        ready=4,
        starting=0,
        history=History(),
        now=T0,
        observation=observe(T0, 1e15),
    )
    assert d.replicas == 8  # as far as maxScaleUpRate allows from 4 ready


def test_a_sample_from_the_future_holds() -> None:
    # Found by the fuzz run: a sample time 1e305 s ahead overflowed the ms conversion.
    for ahead in (1.8e305, 3600.0):
        d = decide(
            PARAMS,
            current=4,
            ready=4,
            starting=0,
            history=History(),
            now=T0,
            observation=observe(T0 + ahead, 0.0),
        )
        assert (d.replicas, d.metrics_stale) == (4, True)
        assert "ahead of the clock" in d.reason


def test_work_above_the_learned_slots_scales_up_before_anything_waits() -> None:
    # 8 slots per replica learned; then 4 replicas run 30 in flight with no queue:
    # 30 / (0.8 × 8) needs 5, so the fleet grows although the queue reads 0.
    sim = Sim(params=replace(PARAMS, min_replicas=4, max_replicas=4), replicas=4)
    run_busy(sim, [(2.0, 32.0)] * 2)
    assert sim.history.slots == 8.0
    sim.params = PARAMS
    up = run_busy(sim, [(0.0, 30.0)] * 3)
    assert [d.replicas for d in up][-1] == 5
    first = next(d for d in up if d.direction == "up")
    assert "30 in flight" in first.reason and "before requests wait" in first.reason
    # Switched off, the queue alone decides: nothing waits, nothing grows.
    sim = Sim(params=replace(PARAMS, min_replicas=4, max_replicas=4), replicas=4)
    run_busy(sim, [(2.0, 32.0)] * 2)
    sim.params = replace(PARAMS, work_utilization=None)
    assert all(d.direction != "up" for d in run_busy(sim, [(0.0, 30.0)] * 3))
