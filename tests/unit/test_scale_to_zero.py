"""Scale to and from zero: the policy, its state, the gateways' load document and status.

Every rule here protects a user from one of two failures: a deployment that
never wakes (requests wait forever at the gateway) or one that goes to zero
under them (the next request pays a cold start it did not need to).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.unit import builders
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.api.status import ColdStart, ModelDeploymentStatus
from turnpike.autoscale.history import History
from turnpike.autoscale.policy import Decision, GatewayLoad, Params, decide
from turnpike.autoscale.signal import CounterDelta, Observation
from turnpike.gateway.load import SLOBook, SLOReading, document, held_of, read
from turnpike.gateway.metrics import Snapshot
from turnpike.reconcile.children import desired_replicas
from turnpike.reconcile.plan import cold_start

T0 = 1_767_225_600.0
SCRAPE = 2.0
IDLE_S = 60.0
PARAMS = Params(
    min_replicas=0,
    max_replicas=4,
    scrape_interval_s=SCRAPE,
    stabilization_window_s=20.0,
    scale_to_zero_idle_s=IDLE_S,
)

QUIET = GatewayLoad(0)  # a gateway answers and holds nothing


def idle(t: float, pods: int = 1, *, completed: float = 0.0) -> Observation:
    names = tuple(f"p{i}" for i in range(pods))
    delta = CounterDelta(completed, 0.0, 0.0, 0.0)
    return Observation(
        time=t,
        queue=0.0,
        pods=names,
        queues={n: 0.0 for n in names},
        in_flight=0.0,
        deltas={n: delta for n in names},
    )


class Loop:
    """The controller's loop without I/O: one decide per scrape."""

    def __init__(self, replicas: int = 1, params: Params = PARAMS) -> None:
        self.params = params
        self.replicas = replicas
        self.history = History()
        self.t = T0

    def step(
        self,
        obs: Observation | str | None = "idle",
        *,
        gateway: GatewayLoad | None = QUIET,
        starting: int = 0,
    ) -> Decision:
        self.t += SCRAPE
        if obs == "idle":
            obs = idle(self.t, self.replicas) if self.replicas else None
        assert not isinstance(obs, str)
        decision = decide(
            self.params,
            current=self.replicas,
            ready=self.replicas - starting,
            starting=starting,
            history=self.history,
            now=self.t,
            observation=obs,
            gateway=gateway,
        )
        self.history, self.replicas = decision.history, decision.replicas
        return decision

    def until_zero(self, limit_s: float = 10 * IDLE_S) -> float:
        start = self.t
        while self.replicas and self.t - start < limit_s:
            self.step()
        return self.t - start


def test_an_idle_replica_goes_to_zero_after_the_idle_window_and_not_before() -> None:
    loop = Loop()
    waited = loop.until_zero()
    assert loop.replicas == 0
    assert IDLE_S <= waited <= IDLE_S + 2 * SCRAPE
    last = loop.history
    assert last.busy_ms is not None


def test_any_work_restarts_the_idle_window() -> None:
    loop = Loop()
    for _ in range(int(IDLE_S / SCRAPE) - 2):
        loop.step()
    loop.step(idle(loop.t + SCRAPE, completed=1))  # one request finished since the last scrape
    for _ in range(int(IDLE_S / SCRAPE) - 2):
        assert loop.step().replicas == 1
    assert loop.until_zero() > 0 and loop.replicas == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gateway": None},  # no gateway answers: nothing could wake it again
        {"gateway": GatewayLoad(2)},  # requests are waiting
        {"starting": 1},  # never while a replica is still loading
        {"obs": None},  # metrics missing: unknown is busy
    ],
    ids=["no-gateway", "held", "starting", "no-metrics"],
)
def test_never_to_zero_when(kwargs: dict[str, Any]) -> None:
    loop = Loop(replicas=2 if "starting" in kwargs else 1)
    for _ in range(int(3 * IDLE_S / SCRAPE)):
        decision = loop.step(**kwargs)
        assert decision.replicas >= 1, decision.reason


def test_held_requests_wake_one_replica_and_nothing_else_does() -> None:
    loop = Loop(replicas=0)
    assert loop.step(None, gateway=GatewayLoad(0)).replicas == 0
    assert loop.step(None, gateway=None).replicas == 0  # no gateway: not woken on a guess
    woke = loop.step(None, gateway=GatewayLoad(100))
    assert woke.replicas == 1 and "100 requests held" in woke.reason
    assert not woke.metrics_stale  # nothing to read at zero is not a metrics fault


def test_at_zero_the_budget_still_caps_the_wake() -> None:
    decision = decide(
        PARAMS,
        current=0,
        ready=0,
        starting=0,
        history=History(),
        now=T0,
        observation=None,
        gateway=GatewayLoad(5),
        budget=0,
    )
    assert decision.replicas == 0 and decision.wanted == 1 and decision.limited_by_budget


def test_with_a_floor_of_one_the_gateway_changes_nothing() -> None:
    loop = Loop(params=Params(min_replicas=1, max_replicas=4, scale_to_zero_idle_s=IDLE_S))
    for _ in range(int(3 * IDLE_S / SCRAPE)):
        assert loop.step().replicas == 1


def test_scaling_down_stops_at_one_until_the_idle_window_passed() -> None:
    loop = Loop(replicas=3, params=replace(PARAMS, scale_down_period_s=0))
    seen = [(loop.t - T0, loop.step().replicas) for _ in range(int(2 * IDLE_S / SCRAPE))]
    before_idle = [replicas for t, replicas in seen if t < IDLE_S]
    assert 1 in before_idle and 0 not in before_idle  # the ordinary scale-down keeps one
    assert seen[-1][1] == 0


def test_the_busy_mark_survives_a_restart_through_status() -> None:
    loop = Loop()
    for _ in range(10):
        loop.step()
    stored = History.from_dict(loop.history.to_dict())
    assert stored.busy_ms == loop.history.busy_ms
    assert History.from_dict(History(busy_ms=5).to_dict()).busy_ms == 5


def test_a_new_deployment_at_min_zero_starts_one_replica() -> None:
    body = builders.md().autoscaled(0, 4).build()
    md = ModelDeployment.model_validate(body)
    assert desired_replicas(md, None) == 1
    assert desired_replicas(md, 0) == 0  # once at zero it stays there until woken


def test_min_zero_without_autoscaling_is_refused_with_the_reason() -> None:
    body = builders.md().spec(minReplicas=0).build()
    with pytest.raises(ValidationError, match="minReplicas 0 needs autoscaling"):
        ModelDeployment.model_validate(body)
    with pytest.raises(ValidationError):
        ModelDeployment.model_validate(
            builders.md()
            .autoscaled(0, 2)
            .spec(autoscaling={"enabled": True, "scaleToZeroIdleSeconds": 5})
            .build()
        )


def test_cold_start_is_stamped_on_wake_and_completed_at_the_first_ready() -> None:
    now = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    at_zero = ModelDeploymentStatus(desired_replicas=0)
    woken = cold_start(at_zero, replicas=1, ready=0, now=now)
    assert woken is not None and woken.ready is None
    waiting = ModelDeploymentStatus(desired_replicas=1, cold_start=woken)
    assert cold_start(waiting, replicas=1, ready=0, now=now + timedelta(seconds=5)) == woken
    done = cold_start(waiting, replicas=1, ready=1, now=now + timedelta(seconds=11))
    assert done == ColdStart(
        woken="2026-12-07T12:00:00Z", ready="2026-12-07T12:00:11Z", seconds=11.0
    )
    assert cold_start(ModelDeploymentStatus(desired_replicas=1), 2, 1, now) is None


def test_the_load_document_round_trips_held_requests_per_deployment() -> None:
    snapshot = Snapshot(
        held={"ml/llama": 3, "static-model": 2},
        queued={("ml/llama", "spot"): 4},
        in_flight={("ml/llama", "reserved"): 1},
    )
    doc = document(snapshot)
    assert doc["deployments"]["ml/llama"] == {"held": 3, "queued": 4, "inFlight": 1}
    assert held_of(doc) == {("ml", "llama"): 3}  # a name without namespace is skipped


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_any_document_is_read_or_refused_never_crashes(data: object) -> None:
    for candidate in (data, {"v": 1, "deployments": data}):
        try:
            held = held_of(candidate)
            slo = read(candidate).slo
        except ValueError:
            continue
        assert all(0 < n <= 1_000_000 and isinstance(n, int) for n in held.values())
        assert all(ns and name and "/" not in name for ns, name in held)
        assert all(0 <= r.good <= r.requests and r.threshold_ms > 0 for r in slo.values())


def test_the_gateways_slo_counts_travel_in_the_load_document() -> None:
    book = SLOBook()
    for good in (True, True, False):
        book.record("ml/llama", 500.0, good=good)
    book.record("ml/other", 100.0, good=True)
    book.record("ml/other", 200.0, good=True)  # a new threshold starts new counters
    reading = read(document(Snapshot(), book))
    assert reading.instance == book.instance
    assert reading.slo == {
        ("ml", "llama"): SLOReading(500.0, 3, 2),
        ("ml", "other"): SLOReading(200.0, 1, 1),
    }
    bad = {"v": 1, "deployments": {"ml/x": {"slo": {"thresholdMs": 5, "requests": 1, "good": 2}}}}
    assert read(bad).slo == {}  # more good than requests is nonsense, skipped
