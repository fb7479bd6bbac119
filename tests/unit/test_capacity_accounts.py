"""Incremental tier accounting: the sums the cache keeps, and the one-consumer
allocation that reads them, agree with accounting the whole tier from scratch."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_capacity_ledger import A100, H100, L4, T0, tier
from turnpike.capacity.accounts import Share, TierAccounts
from turnpike.capacity.ledger import (
    Consumer,
    account,
    allocate,
    allowed_replicas,
    held_by,
)

PRODUCTS = st.sampled_from([H100, A100, L4, None])


@st.composite
def consumers(draw: st.DrawFn) -> Consumer:
    current = draw(st.integers(0, 6))
    return Consumer(
        namespace=draw(st.sampled_from(["a", "b"])),
        name=f"m{draw(st.integers(0, 10_000))}",
        gpus_per_replica=draw(st.sampled_from([1, 2, 4, 8])),
        desired_replicas=current,
        current_replicas=current,
        min_replicas=draw(st.integers(0, 3)),
        rolling=draw(st.booleans()),
        product=draw(PRODUCTS),
        created_at=T0 + timedelta(minutes=draw(st.integers(0, 100))),
    )


budgets = st.dictionaries(
    st.sampled_from([H100, A100, "*"]), st.integers(0, 64), min_size=1, max_size=3
)


@given(budget=budgets, fleet=st.lists(consumers(), max_size=12, unique_by=lambda c: c.name),
       mine=consumers(), desired=st.integers(0, 12))
def test_one_allocation_from_the_sums_matches_the_whole_tier(
    budget: dict[str, int], fleet: list[Consumer], mine: Consumer, desired: int
) -> None:
    """Everyone else asks for what it runs (each asks in its own reconcile), so the
    whole-tier answer for ``mine`` depends on the others only through their sum."""
    fleet = [c for c in fleet if c.name != mine.name]
    the_tier = tier(budget)
    asking = replace(mine, desired_replicas=desired)
    others = account(the_tier, fleet).granted
    whole = allowed_replicas(the_tier, [*fleet, asking])[asking.key]
    one = allocate(the_tier, others, asking)
    assert replace(one, can_surge=True) == replace(whole, can_surge=True)
    if not fleet:  # nobody else to set surge GPUs aside for
        assert one.can_surge == whole.can_surge


def test_a_surge_is_granted_when_the_gpus_left_fit_one() -> None:
    the_tier = tier({H100: 8})
    mine = Consumer(namespace="a", name="m", gpus_per_replica=2, desired_replicas=2,
                    current_replicas=2, product=H100, created_at=T0)
    assert allocate(the_tier, {H100: 2}, mine).can_surge  # 2 + 4 held, 2 left
    assert not allocate(the_tier, {H100: 3}, mine).can_surge  # 1 left
    assert allocate(the_tier, {H100: 3}, replace(mine, rolling=True)).max_replicas == 2


@given(st.lists(st.tuples(st.integers(0, 5), st.one_of(
    st.none(),
    st.builds(Share, st.sampled_from(["gold", "spot"]), st.sampled_from([H100, "*"]),
              st.integers(0, 64)),
)), max_size=40))
def test_the_sums_are_always_the_sum_of_the_shares(events: list[tuple[int, Share | None]]) -> None:
    accounts = TierAccounts()
    latest: dict[tuple[str, str], Share | None] = {}
    for index, share in events:
        key = ("ns", f"m{index}")
        accounts.record(key, share)
        latest[key] = share
    for tier_name in ("gold", "spot"):
        expected: dict[str, int] = {}
        for share in latest.values():
            if share is not None and share.tier == tier_name and share.gpus:
                expected[share.pool] = expected.get(share.pool, 0) + share.gpus
        assert accounts.held(tier_name) == expected
        for key, share in latest.items():
            others = dict(expected)
            if share is not None and share.tier == tier_name and share.gpus:
                others[share.pool] -= share.gpus
            assert accounts.held_by_others(tier_name, key) == {
                k: v for k, v in others.items() if v
            }


def test_held_by_charges_an_unbudgeted_product_under_its_own_name() -> None:
    c = Consumer(namespace="a", name="m", gpus_per_replica=4, desired_replicas=1,
                 current_replicas=1, rolling=True, product=L4, created_at=T0)
    assert held_by(tier({H100: 8}), c) == (L4, 8)
    assert held_by(tier({"*": 8}), c) == ("*", 8)
