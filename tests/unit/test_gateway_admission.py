"""Tier admission: the fair queue's shares, who is shed first, and the bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnpike.gateway.admission import Admission, Outcome, State, Ticket
from turnpike.gateway.config import Tier


def examples(share: float) -> settings:
    """This property's share of the loaded profile's max_examples (long runs are costly)."""
    profile = settings.default
    loaded = profile.max_examples if profile is not None else 100
    return settings(max_examples=max(1, int(loaded * share)))


TIERS = {
    "reserved": Tier(priority=100, weight=3, reserved=True),
    "on-demand": Tier(priority=50, weight=2),
    "spot": Tier(priority=0, weight=1),
}


def test_dispatches_at_once_while_there_are_free_slots() -> None:
    adm = Admission(TIERS, queue_limit=4, slots=2)
    assert adm.arrive("spot").outcome is Outcome.DISPATCH
    assert adm.arrive("spot").outcome is Outcome.DISPATCH
    third = adm.arrive("reserved")
    assert third.outcome is Outcome.QUEUED
    assert adm.in_flight == 2 and adm.queued == 1


def test_a_finished_request_lets_the_next_one_go() -> None:
    adm = Admission(TIERS, queue_limit=4, slots=1)
    first = adm.arrive("spot").ticket
    waiting = adm.arrive("spot").ticket
    assert first is not None and waiting is not None
    assert adm.finish(first) == [waiting]
    assert waiting.state is State.IN_FLIGHT


def test_growing_the_fleet_dispatches_queued_requests() -> None:
    adm = Admission(TIERS, queue_limit=10, slots=0, can_grow=True)
    tickets = [adm.arrive("spot").ticket for _ in range(3)]
    assert adm.resize(2, True) == tickets[:2]


def test_full_queue_of_a_growing_deployment_is_503_for_everyone() -> None:
    adm = Admission(TIERS, queue_limit=1, slots=1, can_grow=True)
    adm.arrive("spot")
    adm.arrive("spot")
    assert adm.arrive("reserved").outcome is Outcome.FULL


def test_at_its_maximum_the_lower_tier_is_shed_first() -> None:
    adm = Admission(TIERS, queue_limit=2, slots=1, can_grow=False)
    adm.arrive("reserved")  # in flight
    queued_spot = adm.arrive("spot").ticket
    adm.arrive("on-demand")
    # The queue is full: a reserved arrival pushes out the spot request, not on-demand.
    decision = adm.arrive("reserved")
    assert decision.outcome is Outcome.QUEUED and decision.evicted == (queued_spot,)
    assert queued_spot is not None and queued_spot.state is State.SHED
    # A spot arrival is now shed itself: nothing lower is waiting.
    assert adm.arrive("spot").outcome is Outcome.SHED


def test_reserved_within_its_share_is_not_shed_even_by_higher_priorities() -> None:
    tiers = {"reserved": Tier(priority=0, weight=1, reserved=True), "vip": Tier(priority=9)}
    adm = Admission(tiers, queue_limit=3, slots=1, can_grow=False)
    adm.arrive("vip")
    for _ in range(2):
        adm.arrive("reserved")  # reserved's share: 1/2 of 4
    adm.arrive("vip")
    # vip (over its share of 2) yields to reserved, which has not used its share.
    assert adm.arrive("vip").outcome is Outcome.SHED
    # A third reserved request would be beyond its share: as the lower priority, it yields.
    assert adm.arrive("reserved").outcome is Outcome.SHED


def test_withdraw_takes_a_queued_request_out_once() -> None:
    adm = Admission(TIERS, queue_limit=2, slots=0)
    ticket = adm.arrive("spot").ticket
    assert ticket is not None
    assert adm.withdraw(ticket) and not adm.withdraw(ticket)
    assert adm.queued == 0 and adm.resize(1, False) == []


def test_finishing_a_request_twice_is_a_bug() -> None:
    adm = Admission(TIERS, queue_limit=0, slots=1)
    ticket = adm.arrive("spot").ticket
    assert ticket is not None
    adm.finish(ticket)
    with pytest.raises(ValueError):
        adm.finish(ticket)


def _run_backlogged(
    weights: list[float], costs: list[float], rounds: int, slots: int
) -> list[float]:
    """Every tier always has work waiting; returns the cost each tier was served."""
    tiers = {f"t{i}": Tier(weight=w) for i, w in enumerate(weights)}
    adm = Admission(tiers, queue_limit=100_000, slots=slots)
    in_flight: list[Ticket] = []
    for _ in range(slots + 3):  # more than the slots: every tier has a backlog
        for i in range(len(weights)):
            decision = adm.arrive(f"t{i}", costs[i])
            if decision.outcome is Outcome.DISPATCH:
                assert decision.ticket is not None
                in_flight.append(decision.ticket)
    served = [0.0] * len(weights)
    for _ in range(rounds):
        done = in_flight.pop(0)
        started = adm.finish(done)
        for ticket in started:
            index = int(ticket.tier[1:])
            served[index] += ticket.cost
            adm.arrive(ticket.tier, ticket.cost)  # stay backlogged
        in_flight += started
    return served


@examples(0.2)
@given(
    weights=st.lists(st.integers(1, 10), min_size=2, max_size=4),
    slots=st.integers(1, 8),
)
def test_backlogged_tiers_get_their_weights_share_within_5_percent(
    weights: list[int], slots: int
) -> None:
    served = _run_backlogged([float(w) for w in weights], [1.0] * len(weights), 3000, slots)
    total = sum(served)
    for weight, got in zip(weights, served, strict=True):
        expected = weight / sum(weights) * total
        assert abs(got - expected) <= 0.05 * expected, (weights, served)


@examples(0.2)
@given(
    weights=st.lists(st.integers(1, 5), min_size=2, max_size=3),
    costs=st.lists(st.integers(1, 4), min_size=3, max_size=3),
)
def test_shares_hold_for_the_work_served_when_requests_cost_differently(
    weights: list[int], costs: list[int]
) -> None:
    served = _run_backlogged(
        [float(w) for w in weights], [float(c) for c in costs[: len(weights)]], 4000, 2
    )
    total = sum(served)
    for weight, got in zip(weights, served, strict=True):
        expected = weight / sum(weights) * total
        assert abs(got - expected) <= 0.05 * expected, (weights, costs, served)


def test_an_idle_tier_gets_no_credit_to_burst_with_later() -> None:
    tiers = {"a": Tier(weight=1), "b": Tier(weight=1)}
    adm = Admission(tiers, queue_limit=1000, slots=1)
    running = adm.arrive("a").ticket
    for _ in range(20):
        adm.arrive("a")  # a keeps a backlog throughout
    for _ in range(200):
        assert running is not None
        (running,) = adm.finish(running)
        adm.arrive("a")
    for _ in range(10):
        adm.arrive("b")
    # b was idle for 200 of a's requests: it now alternates with a, not 10 turns in a row.
    order = []
    for _ in range(10):
        assert running is not None
        (running,) = adm.finish(running)
        order.append(running.tier)
    assert 4 <= order.count("b") <= 6, order


EVENTS = st.lists(
    st.tuples(st.sampled_from(["arrive", "finish", "withdraw"]), st.sampled_from(list(TIERS))),
    max_size=200,
)


@given(events=EVENTS, slots=st.integers(0, 4), queue_limit=st.integers(0, 6))
def test_bounds_shed_order_and_reserved_share_hold_for_any_traffic(
    events: list[tuple[str, str]], slots: int, queue_limit: int
) -> None:
    adm = Admission(TIERS, queue_limit=queue_limit, slots=slots, can_grow=False)
    running: list[Ticket] = []
    waiting: list[Ticket] = []
    for action, tier in events:
        if action == "finish" and running:
            started = adm.finish(running.pop(0))
            running += started
            waiting = [t for t in waiting if t not in started]
        elif action == "withdraw" and waiting:
            assert adm.withdraw(waiting.pop())
        elif action == "arrive":
            queued_tiers = {t.tier for t in waiting}
            share = {t: adm.share(t, arriving=tier) for t in TIERS}
            usage = {t: adm.usage(t) + (t == tier) for t in TIERS}
            decision = adm.arrive(tier)
            victims = [t.tier for t in decision.evicted]
            if decision.outcome is Outcome.SHED:
                victims.append(tier)
            for victim in victims:
                # Reserved traffic is shed only beyond its share.
                if TIERS[victim].reserved:
                    assert usage[victim] > share[victim]
                # Nothing of a lower priority that could be shed was left waiting.
                lower = [
                    t
                    for t in queued_tiers | {tier}
                    if TIERS[t].priority < TIERS[victim].priority
                    and (not TIERS[t].reserved or usage[t] > share[t])
                ]
                assert not lower, (victim, lower)
            waiting = [t for t in waiting if t not in decision.evicted]
            if decision.outcome is Outcome.DISPATCH:
                assert decision.ticket is not None
                running.append(decision.ticket)
            elif decision.outcome is Outcome.QUEUED:
                assert decision.ticket is not None
                waiting.append(decision.ticket)
        assert adm.queued <= queue_limit
        assert adm.in_flight <= slots
        assert adm.queued == len(waiting) and adm.in_flight == len(running)
