"""GPU accounting of a CapacityTier: surge, pools, first come first served, and
what is never taken away."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from turnpike.api.capacitytier import CapacityTier
from turnpike.capacity.ledger import (
    REASON_BUDGET_EXHAUSTED,
    REASON_GRANTED,
    REASON_MIN_DOES_NOT_FIT,
    REASON_NAMESPACE_NOT_ALLOWED,
    REASON_NO_BUDGET,
    REASON_SCALING_DOWN,
    REASON_TIER_TERMINATING,
    Allocation,
    Consumer,
    ConsumerKey,
    Ledger,
    account,
    allowed_replicas,
    gpus_held,
    grant,
    order_key,
    pool_for,
    replicas_within,
    usage_of,
)

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
L4 = "NVIDIA-L4"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def tier(budget: dict[str, int], name: str = "gpus", **spec: Any) -> CapacityTier:
    spec.setdefault("class", "reserved")
    metadata: dict[str, Any] = {"name": name, "generation": 1}
    if "deletionTimestamp" in spec:
        metadata["deletionTimestamp"] = spec.pop("deletionTimestamp")
    return CapacityTier.from_k8s({"metadata": metadata, "spec": {**spec, "gpuBudget": budget}})


def consumer(name: str, *, age: int = 0, namespace: str = "ml", **fields: Any) -> Consumer:
    """``age``: minutes after T0 it was created; a lower age comes first."""
    fields.setdefault("gpus_per_replica", 1)
    fields.setdefault("desired_replicas", 1)
    return Consumer(
        namespace=namespace, name=name, created_at=T0 + timedelta(minutes=age), **fields
    )


def replicas(allocations: dict[ConsumerKey, Allocation]) -> dict[str, int]:
    return {key.name: a.max_replicas for key, a in allocations.items()}


# --- gpus_held ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "per", "rolling", "gpus"),
    [
        (0, 4, False, 0),
        (0, 4, True, 0),  # nothing to roll out, so no surge pod
        (1, 1, False, 1),
        (1, 1, True, 2),
        (3, 4, False, 12),
        (3, 4, True, 16),  # (replicas + maxSurge 1) × GPUs per replica
        (10, 8, True, 88),
    ],
)
def test_gpus_held(n: int, per: int, rolling: bool, gpus: int) -> None:
    assert gpus_held(n, per, rolling) == gpus


def test_gpus_held_refuses_negatives() -> None:
    with pytest.raises(ValueError):
        gpus_held(-1, 1)
    with pytest.raises(ValueError):
        gpus_held(1, -1)


@pytest.mark.parametrize("rolling", [False, True])
@pytest.mark.parametrize("per", [1, 2, 4, 8])
def test_replicas_within_inverts_gpus_held(per: int, rolling: bool) -> None:
    for gpus in range(-3, 70):
        n = replicas_within(gpus, per, rolling)
        assert gpus_held(n, per, rolling) <= max(gpus, 0)
        assert gpus_held(n + 1, per, rolling) > gpus


# --- pools ---------------------------------------------------------------------


def test_pool_for() -> None:
    budget = {H100: 16, "*": 8}
    assert pool_for(budget, H100) == H100
    assert pool_for(budget, A100) == "*"  # no entry of its own: the wildcard
    assert pool_for(budget, None) == "*"
    assert pool_for({H100: 16}, None) is None  # no product: never a product's pool
    assert pool_for({H100: 16}, A100) is None


def test_mixed_products_draw_from_their_own_pools() -> None:
    t = tier({H100: 16, A100: 8, "*": 4})
    got = allowed_replicas(
        t,
        [
            consumer("h", product=H100, gpus_per_replica=8, desired_replicas=2),
            consumer("a", product=A100, gpus_per_replica=4, desired_replicas=2, age=1),
            consumer("l4", product=L4, gpus_per_replica=1, desired_replicas=3, age=2),
            consumer("any", gpus_per_replica=1, desired_replicas=1, age=3),
        ],
    )
    assert replicas(got) == {"h": 2, "a": 2, "l4": 3, "any": 1}
    assert {k.name: a.pool for k, a in got.items()} == {"h": H100, "a": A100, "l4": "*", "any": "*"}
    usage = usage_of(t, got)
    assert usage.granted == {"*": 4, A100: 8, H100: 16}
    assert usage.free == {H100: 0, A100: 0, "*": 0}


def test_pools_never_borrow() -> None:
    # H100 is exhausted; the wildcard's free GPUs are not lent to an H100 deployment.
    t = tier({H100: 8, "*": 16})
    got = allowed_replicas(
        t,
        [
            consumer("first", product=H100, gpus_per_replica=8, desired_replicas=1),
            consumer("second", product=H100, gpus_per_replica=8, desired_replicas=1, age=1),
        ],
    )
    assert replicas(got) == {"first": 1, "second": 0}
    assert got[ConsumerKey("ml", "second")].reason == REASON_MIN_DOES_NOT_FIT
    assert usage_of(t, got).free == {H100: 0, "*": 16}


def test_no_pool_for_the_product() -> None:
    t = tier({H100: 8})
    got = allowed_replicas(
        t,
        [
            consumer("a100", product=A100, desired_replicas=2),
            consumer("anything", desired_replicas=2, age=1),
        ],
    )
    for a in got.values():
        assert (a.max_replicas, a.reason, a.pool, a.limited) == (0, REASON_NO_BUDGET, None, True)
    assert "nor '*'" in got[ConsumerKey("ml", "a100")].message


# --- first come, first served ----------------------------------------------------


def test_race_for_the_last_gpus_has_one_deterministic_winner() -> None:
    t = tier({"*": 12})
    racers = [
        consumer("running", gpus_per_replica=4, desired_replicas=1, current_replicas=1),
        consumer("early", gpus_per_replica=8, desired_replicas=1, age=5),
        consumer("late", gpus_per_replica=8, desired_replicas=1, age=6),
    ]
    for order in itertools.permutations(racers):
        got = allowed_replicas(t, list(order))
        assert replicas(got) == {"running": 1, "early": 1, "late": 0}
        assert list(got) == [c.key for c in racers]  # results iterate first come first
        assert usage_of(t, got).granted == {"*": 12}
    late = allowed_replicas(t, racers)[ConsumerKey("ml", "late")]
    assert late.reason == REASON_MIN_DOES_NOT_FIT
    assert "needs 8 GPUs" in late.message and "0 are free" in late.message


def test_same_second_ties_break_by_namespace_then_name() -> None:
    t = tier({"*": 1})
    same = [
        consumer("b", namespace="team-a"),
        consumer("a", namespace="team-b"),
        consumer("a", namespace="team-a"),
    ]
    for order in itertools.permutations(same):
        got = allowed_replicas(t, list(order))
        assert [str(k) for k, a in got.items() if a.max_replicas] == ["team-a/a"]


def test_timestamps_as_the_api_server_writes_them() -> None:
    early = Consumer(
        namespace="z", name="z", gpus_per_replica=1, desired_replicas=1,
        created_at="2026-01-01T00:00:00Z",
    )  # fmt: skip
    late = Consumer(
        namespace="a", name="a", gpus_per_replica=1, desired_replicas=1,
        created_at=datetime(2026, 1, 1, 0, 0, 1),  # naive: read as UTC
    )  # fmt: skip
    assert order_key(early) < order_key(late)
    assert replicas(allowed_replicas(tier({"*": 1}), [late, early])) == {"z": 1, "a": 0}
    with pytest.raises(ValueError):
        Consumer(namespace="a", name="b", gpus_per_replica=1, desired_replicas=1,
                 created_at="yesterday")  # fmt: skip


def test_running_replicas_are_never_revoked_for_an_earlier_consumer() -> None:
    # "old" was created first but asks for more only now; "young" already runs 6.
    t = tier({"*": 8})
    got = allowed_replicas(
        t,
        [
            consumer("old", desired_replicas=8, current_replicas=2, min_replicas=1),
            consumer("young", desired_replicas=6, current_replicas=6, age=1),
        ],
    )
    assert replicas(got) == {"old": 2, "young": 6}
    old = got[ConsumerKey("ml", "old")]
    assert (old.limited, old.reason) == (True, REASON_BUDGET_EXHAUSTED)


def test_budget_cut_below_what_runs_keeps_it_and_reports_overcommit() -> None:
    t = tier({"*": 4})
    got = allowed_replicas(
        t,
        [
            consumer("big", gpus_per_replica=2, desired_replicas=4, current_replicas=4),
            consumer("newcomer", desired_replicas=1, age=1),
        ],
    )
    assert replicas(got) == {"big": 4, "newcomer": 0}
    usage = usage_of(t, got)
    assert usage.granted == {"*": 8}
    assert usage.overcommitted == {"*": 4}
    assert usage.free == {"*": 0}


def test_scaling_down_gives_gpus_back_in_the_same_evaluation() -> None:
    t = tier({"*": 8})
    got = allowed_replicas(
        t,
        [
            consumer("shrinking", gpus_per_replica=2, desired_replicas=1, current_replicas=4),
            consumer("growing", gpus_per_replica=2, desired_replicas=3, age=1),
        ],
    )
    assert replicas(got) == {"shrinking": 1, "growing": 3}
    shrinking = got[ConsumerKey("ml", "shrinking")]
    assert (shrinking.reason, shrinking.limited) == (REASON_SCALING_DOWN, False)


# --- minReplicas -----------------------------------------------------------------


def test_min_that_does_not_fit_gets_nothing_not_half() -> None:
    t = tier({"*": 10})
    got = allowed_replicas(
        t,
        [consumer("big", gpus_per_replica=4, desired_replicas=5, min_replicas=3)],
    )
    big = got[ConsumerKey("ml", "big")]
    assert (big.max_replicas, big.gpus, big.limited) == (0, 0, True)
    assert big.reason == REASON_MIN_DOES_NOT_FIT
    assert "minReplicas 3 needs 12 GPUs" in big.message and "10 are free" in big.message


def test_min_that_fits_grows_as_far_as_the_budget_goes() -> None:
    t = tier({"*": 10})
    got = allowed_replicas(
        t, [consumer("big", gpus_per_replica=4, desired_replicas=5, min_replicas=2)]
    )
    assert (got[ConsumerKey("ml", "big")].max_replicas, got[ConsumerKey("ml", "big")].gpus) == (
        2,
        8,
    )
    assert "2 of 5 replicas granted" in got[ConsumerKey("ml", "big")].message


def test_a_deployment_that_does_not_fit_does_not_block_smaller_ones() -> None:
    t = tier({"*": 4})
    got = allowed_replicas(
        t,
        [
            consumer("big", gpus_per_replica=8, desired_replicas=1),
            consumer("small", gpus_per_replica=2, desired_replicas=2, age=1),
        ],
    )
    assert replicas(got) == {"big": 0, "small": 2}


def test_running_below_min_grows_towards_it() -> None:
    # minReplicas raised from 1 to 4 while 1 runs: it keeps 1 and takes what fits.
    t = tier({"*": 3})
    got = allowed_replicas(
        t,
        [consumer("m", desired_replicas=4, min_replicas=4, current_replicas=1)],
    )
    m = got[ConsumerKey("ml", "m")]
    assert (m.max_replicas, m.reason) == (3, REASON_BUDGET_EXHAUSTED)


def test_desired_zero_is_granted_quietly() -> None:
    got = allowed_replicas(tier({"*": 0}), [consumer("idle", desired_replicas=0)])
    idle = got[ConsumerKey("ml", "idle")]
    assert (idle.max_replicas, idle.limited, idle.reason) == (0, False, REASON_GRANTED)


# --- rolling updates ------------------------------------------------------------


def test_a_rollout_holds_its_surge_pod() -> None:
    t = tier({H100: 16})
    got = allowed_replicas(
        t,
        [
            consumer("rolling", product=H100, gpus_per_replica=4, desired_replicas=3,
                     current_replicas=3, rolling=True),
            consumer("next", product=H100, gpus_per_replica=4, desired_replicas=1, age=1),
        ],
    )  # fmt: skip
    # 3 replicas + 1 surge pod = 16 GPUs: nothing is left for "next".
    assert replicas(got) == {"rolling": 3, "next": 0}
    assert got[ConsumerKey("ml", "rolling")].gpus == 16
    held = consumer("r", product=H100, gpus_per_replica=4, current_replicas=3,
                    desired_replicas=3, rolling=True)  # fmt: skip
    assert account(t, [held]).granted == {H100: 16}


def test_growth_during_a_rollout_counts_the_surge_once() -> None:
    t = tier({"*": 10})
    got = allowed_replicas(
        t,
        [consumer("r", gpus_per_replica=2, desired_replicas=8, current_replicas=2, rolling=True)],
    )
    r = got[ConsumerKey("ml", "r")]
    assert (r.max_replicas, r.gpus) == (4, 10)  # (4 + 1 surge) × 2


def test_surge_headroom_is_promised_to_one_rollout_at_a_time() -> None:
    t = tier({"*": 10})
    got = allowed_replicas(
        t,
        [
            consumer("a", gpus_per_replica=4, desired_replicas=1, current_replicas=1),
            consumer("b", gpus_per_replica=4, desired_replicas=1, current_replicas=1, age=1),
            consumer("c", gpus_per_replica=1, desired_replicas=1, current_replicas=1, age=2),
        ],
    )
    # 9 granted, 1 free: a's and b's rollouts need 4 each (use maxSurge 0), c's fits.
    assert {k.name: a.can_surge for k, a in got.items()} == {"a": False, "b": False, "c": True}
    assert usage_of(t, got).free == {"*": 1}  # the promise does not consume the budget


def test_surge_promises_are_first_come_first_served() -> None:
    t = tier({"*": 6})
    got = allowed_replicas(
        t,
        [
            consumer("a", gpus_per_replica=2, desired_replicas=1, current_replicas=1),
            consumer("b", gpus_per_replica=2, desired_replicas=1, current_replicas=1, age=1),
        ],
    )
    assert {k.name: a.can_surge for k, a in got.items()} == {"a": True, "b": False}


# --- namespaces and deletion ----------------------------------------------------


def test_a_disallowed_namespace_keeps_what_runs_but_does_not_grow() -> None:
    t = tier({"*": 8}, namespaces=["ml"])
    got = allowed_replicas(
        t,
        [
            consumer("inside", desired_replicas=2),
            consumer("outside", namespace="web", desired_replicas=4, current_replicas=1, age=1),
            consumer("new-outside", namespace="web", desired_replicas=1, age=2),
        ],
    )
    assert replicas(got) == {"inside": 2, "outside": 1, "new-outside": 0}
    outside = got[ConsumerKey("web", "outside")]
    assert outside.reason == REASON_NAMESPACE_NOT_ALLOWED
    assert "keeping the 1 running" in outside.message


def test_namespace_selector_uses_the_consumers_namespace_labels() -> None:
    t = tier({"*": 8}, namespaceSelector={"matchLabels": {"team": "ml"}})
    got = allowed_replicas(
        t,
        [
            consumer("labelled", namespace="a", namespace_labels={"team": "ml"}),
            consumer("unlabelled", namespace="b", age=1),
        ],
    )
    assert replicas(got) == {"labelled": 1, "unlabelled": 0}


def test_a_terminating_tier_grants_no_growth() -> None:
    t = tier({"*": 8}, deletionTimestamp="2026-02-01T00:00:00Z")
    got = allowed_replicas(
        t, [consumer("m", desired_replicas=3, current_replicas=2), consumer("n", age=1)]
    )
    assert replicas(got) == {"m": 2, "n": 0}
    assert {a.reason for a in got.values()} == {REASON_TIER_TERMINATING}


# --- one request against a snapshot ----------------------------------------------


def test_grant_against_a_snapshot() -> None:
    t = tier({"*": 8, H100: 8})
    running = consumer("running", gpus_per_replica=2, desired_replicas=2, current_replicas=2)
    me = consumer("me", gpus_per_replica=2, desired_replicas=5, current_replicas=1, age=1)
    usage = account(t, [running, me])
    assert usage.granted == {"*": 6}
    assert usage.free == {"*": 2, H100: 8}
    g = grant(usage, me)
    assert (g.max_replicas, g.gpus, g.limited) == (2, 4, True)  # its own 2 GPUs + 2 free
    assert grant(usage, me, admitted=False).max_replicas == 1
    h = grant(usage, consumer("h", product=H100, gpus_per_replica=8, desired_replicas=2))
    assert (h.max_replicas, h.pool) == (1, H100)
    assert grant(account(t, []), consumer("x", product=A100)).pool == "*"
    assert grant(account(tier({H100: 1}), []), consumer("x")).reason == REASON_NO_BUDGET


def test_unbudgeted_holdings_are_kept_and_counted_under_their_product() -> None:
    t = tier({H100: 8})
    got = allowed_replicas(t, [consumer("a", product=A100, current_replicas=2,
                                        desired_replicas=3)])  # fmt: skip
    a = got[ConsumerKey("ml", "a")]
    assert (a.max_replicas, a.pool, a.reason) == (2, None, REASON_NO_BUDGET)
    assert usage_of(t, got).overcommitted == {A100: 2}


def test_account_counts_unbudgeted_holdings_under_their_product() -> None:
    usage = account(tier({H100: 8}), [consumer("a", product=A100, current_replicas=2,
                                               desired_replicas=2)])  # fmt: skip
    assert usage.granted == {A100: 2}
    assert usage.overcommitted == {A100: 2}
    assert usage.free == {H100: 8}


def test_ledger() -> None:
    ledger = Ledger({"*": 4})
    ledger.charge("*", 3)
    ledger.charge("*", 0)
    ledger.charge(H100, 1)
    assert (ledger.headroom("*"), ledger.headroom(H100)) == (1, -1)
    assert ledger.usage().granted == {"*": 3, H100: 1}


# --- inputs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"gpus_per_replica": 0},
        {"desired_replicas": -1},
        {"current_replicas": -1},
        {"min_replicas": -1},
    ],
)
def test_consumers_refuse_impossible_counts(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        consumer("x", **fields)


def test_consumers_are_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        allowed_replicas(tier({"*": 1}), [consumer("x"), consumer("x", age=1)])


# --- invariants over random tiers -------------------------------------------------


def _random_case(rng: random.Random) -> tuple[CapacityTier, list[Consumer]]:
    budget = {p: rng.randrange(0, 33) for p in rng.sample(["*", H100, A100], rng.randint(1, 3))}
    consumers = []
    for i in range(rng.randint(0, 8)):
        desired = rng.randint(0, 6)
        consumers.append(
            consumer(
                f"m{i}",
                namespace=rng.choice(["a", "b"]),
                age=rng.randint(0, 3),
                product=rng.choice([None, H100, A100, L4]),
                gpus_per_replica=rng.choice([1, 2, 4, 8]),
                desired_replicas=desired,
                min_replicas=rng.randint(1, 4),
                current_replicas=rng.choice([0, 0, rng.randint(0, 6)]),
                rolling=rng.random() < 0.3,
            )
        )
    return tier(budget), consumers


@pytest.mark.parametrize("seed", range(300))
def test_invariants(seed: int) -> None:
    rng = random.Random(seed)
    t, consumers = _random_case(rng)
    got = allowed_replicas(t, consumers)
    budget = t.spec.gpu_budget

    shuffled = consumers[:]
    rng.shuffle(shuffled)
    assert allowed_replicas(t, shuffled) == got  # order of the input never matters

    kept_gpus: dict[str, int] = {}
    for c in consumers:
        a = got[c.key]
        assert c.kept <= a.max_replicas <= max(c.desired_replicas, c.kept)  # never revoked
        assert a.gpus == gpus_held(a.max_replicas, c.gpus_per_replica, c.rolling)
        assert a.limited == (a.max_replicas < c.desired_replicas)
        if c.kept == 0 and a.max_replicas:
            assert a.max_replicas >= c.floor  # all of the minimum or nothing
        charged = a.pool or c.product or "*"
        kept_gpus[charged] = kept_gpus.get(charged, 0) + gpus_held(
            c.kept, c.gpus_per_replica, c.rolling
        )

    usage = usage_of(t, got)
    for pool, granted in usage.granted.items():
        # Only never-revoked replicas may push a pool beyond its budget.
        assert granted <= max(budget.get(pool, 0), kept_gpus.get(pool, 0))
        if granted > budget.get(pool, 0):
            assert granted == kept_gpus[pool]

    for c in consumers:  # a limited consumer could not have had one more replica
        a = got[c.key]
        if a.reason == REASON_BUDGET_EXHAUSTED:
            assert a.pool is not None
            assert usage.headroom(a.pool) < c.gpus_per_replica
        if a.reason == REASON_MIN_DOES_NOT_FIT:  # nor its minimum, even at the end
            assert a.pool is not None
            assert usage.headroom(a.pool) < gpus_held(c.floor, c.gpus_per_replica, c.rolling)


def test_random_cases_reach_every_outcome() -> None:
    reasons = set()
    for seed in range(300):
        t, consumers = _random_case(random.Random(seed))
        reasons |= {a.reason for a in allowed_replicas(t, consumers).values()}
    assert reasons >= {
        REASON_GRANTED,
        REASON_SCALING_DOWN,
        REASON_BUDGET_EXHAUSTED,
        REASON_MIN_DOES_NOT_FIT,
        REASON_NO_BUDGET,
    }
