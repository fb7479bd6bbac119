"""Dedicated and reserved budgets against the GPUs the nodes have (Overcommitted)."""

from __future__ import annotations

from itertools import combinations
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from turnpike.api.capacitytier import CapacityTier, CapacityTierStatus
from turnpike.capacity.overcommit import (
    ClusterGpus,
    NodeGpus,
    PoolCommitment,
    commitments,
    node_gpus,
    overcommit_condition,
)
from turnpike.capacity.tierstatus import tier_status

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
L4 = "NVIDIA-L4"
NOW = "2026-03-01T00:00:00Z"
LATER = "2026-03-01T01:00:00Z"


def tier(name: str, tier_class: str, budget: dict[str, int], **extra: Any) -> CapacityTier:
    metadata: dict[str, Any] = {"name": name, "generation": 2}
    if "deletionTimestamp" in extra:
        metadata["deletionTimestamp"] = extra.pop("deletionTimestamp")
    if tier_class == "dedicated":
        extra.setdefault("nodeSelector", {"turnpike.dev/pool": name})
    status = extra.pop("status", None)
    spec = {"class": tier_class, "gpuBudget": budget, **extra}
    return CapacityTier.from_k8s({"metadata": metadata, "spec": spec, "status": status})


def node(
    product: str | None = H100,
    gpus: str | int | None = 8,
    *,
    ready: str = "True",
    cordoned: bool = False,
    deleting: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "n", "labels": {"kubernetes.io/os": "linux"}}
    if product is not None:
        metadata["labels"]["nvidia.com/gpu.product"] = product
    if deleting:
        metadata["deletionTimestamp"] = NOW
    allocatable = {"cpu": "96", "memory": "1Ti"}
    if gpus is not None:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return {
        "metadata": metadata,
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "allocatable": allocatable,
            "capacity": {"nvidia.com/gpu": "8"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": ready},
            ],
        },
    }


def cluster(*nodes: dict[str, Any]) -> ClusterGpus:
    return ClusterGpus.of(g for n in nodes if (g := node_gpus(n)) is not None)


def condition(t: CapacityTier, pools: dict[str, PoolCommitment]) -> tuple[str, str, str]:
    wanted = overcommit_condition(t, pools)
    assert wanted is not None
    return wanted[1], wanted[2], wanted[3]


# ---------------------------------------------------------------- nodes


def test_a_node_is_reduced_to_product_gpus_and_whether_it_counts() -> None:
    assert node_gpus(node()) == NodeGpus(H100, 8, True)
    assert node_gpus(node(gpus=6)) == NodeGpus(H100, 6, True)  # allocatable, not capacity
    assert node_gpus(node(None)) == NodeGpus("", 8, True)
    assert node_gpus(node(ready="False")) == NodeGpus(H100, 8, False)
    assert node_gpus(node(ready="Unknown")) == NodeGpus(H100, 8, False)
    assert node_gpus(node(cordoned=True)) == NodeGpus(H100, 8, False)
    assert node_gpus(node(deleting=True)) == NodeGpus(H100, 8, False)


def test_nodes_without_gpus_are_not_tracked() -> None:
    assert node_gpus(node(gpus=None)) is None
    assert node_gpus(node(gpus=0)) is None
    assert node_gpus(node(gpus="2k")) is None  # not a GPU count
    assert node_gpus({"metadata": {"name": "bare"}}) is None


def test_cluster_sums_per_product_and_sets_aside_what_does_not_count() -> None:
    gpus = cluster(node(), node(), node(A100, 4), node(A100, 4, cordoned=True), node(None, 2))
    assert gpus.usable == {"": 2, A100: 4, H100: 16}
    assert gpus.left_out == {A100: 4}


# ---------------------------------------------------------------- commitments


def test_budgets_that_fit_are_within_capacity() -> None:
    tiers = [tier("a", "reserved", {H100: 8}), tier("b", "dedicated", {H100: 8, "*": 4})]
    pools = commitments(tiers, cluster(node(), node(), node(A100, 4)))
    assert not any(c.overcommitted for c in pools.values())
    status, reason, message = condition(tiers[1], pools)
    assert (status, reason) == ("False", "WithinCapacity")
    assert f"{H100} 16/16" in message and "* 4/4" in message


def test_product_budgets_over_the_nodes_name_product_sum_gpus_and_tiers() -> None:
    tiers = [
        tier("search", "reserved", {A100: 6}),
        tier("private", "dedicated", {A100: 4}),
        tier("cheap", "spot", {A100: 100}),  # promises nothing
        tier("elastic", "on-demand", {A100: 100}),
    ]
    pools = commitments(tiers, cluster(node(A100, 4), node(A100, 4)))
    assert pools[A100].budgeted == 10 and pools[A100].present == 8
    assert pools[A100].tiers == ("private", "search")
    for t in tiers[:2]:
        status, reason, message = condition(t, pools)
        assert (status, reason) == ("True", "BudgetsExceedNodes")
        assert message == (
            f"{A100} budgets total 10 but nodes have 8 GPUs; "
            "dedicated and reserved tiers: private, search"
        )
    assert overcommit_condition(tiers[2], pools) is None
    assert overcommit_condition(tiers[3], pools) is None


def test_a_product_no_node_has_is_overcommitted() -> None:
    t = tier("a", "reserved", {L4: 1})
    status, _, message = condition(t, commitments([t], cluster(node())))
    assert status == "True" and f"{L4} budgets total 1 but nodes have 0 GPUs" in message


def test_any_product_budgets_get_what_the_products_leave() -> None:
    """16 H100 + 8 A100: H100 budgets of 12 leave 4 H100 and 8 A100 for '*'."""
    gpus = cluster(node(), node(), node(A100, 4), node(A100, 4))
    fits = [tier("h", "reserved", {H100: 12}), tier("any", "reserved", {"*": 12})]
    pools = commitments(fits, gpus)
    assert pools["*"].claimed_by_products == 12 and pools["*"].available == 12
    assert condition(fits[1], pools)[0] == "False"

    over = [tier("h", "reserved", {H100: 12}), tier("any", "reserved", {"*": 13})]
    pools = commitments(over, gpus)
    status, _, message = condition(over[1], pools)
    assert status == "True"
    assert message == (
        "'*' budgets total 13 but the cluster's 24 GPUs leave 12 after per-product budgets "
        "claim 12; dedicated and reserved tiers: any"
    )
    # The product's own promise can be kept: its tier is not the one overcommitted.
    assert condition(over[0], pools)[0] == "False"


def test_a_product_over_its_nodes_leaves_nothing_of_it_for_any_product() -> None:
    gpus = cluster(node(), node(A100, 4))
    tiers = [tier("h", "reserved", {H100: 10}), tier("any", "reserved", {"*": 4})]
    pools = commitments(tiers, gpus)
    assert pools[H100].overcommitted
    assert pools["*"].available == 4 and not pools["*"].overcommitted
    assert condition(tiers[1], pools)[0] == "False"


def test_unlabelled_gpus_serve_only_any_product_budgets() -> None:
    gpus = cluster(node(None, 8))
    assert commitments([tier("a", "reserved", {"*": 8})], gpus)["*"].overcommitted is False
    assert commitments([tier("a", "reserved", {H100: 1})], gpus)[H100].overcommitted is True


def test_cordoned_and_not_ready_gpus_are_not_counted_but_mentioned() -> None:
    t = tier("a", "reserved", {H100: 16})
    gpus = cluster(node(), node(cordoned=True))
    status, _, message = condition(t, commitments([t], gpus))
    assert status == "True"
    assert "nodes have 8 GPUs (8 more on cordoned or NotReady nodes, not counted)" in message
    assert condition(t, commitments([t], cluster(node(), node())))[0] == "False"


def test_zero_budgets_and_terminating_tiers_promise_nothing() -> None:
    gone = tier("gone", "reserved", {H100: 16}, deletionTimestamp=NOW)
    empty = tier("empty", "reserved", {H100: 0, "*": 0})
    live = tier("live", "reserved", {H100: 8})
    pools = commitments([gone, empty, live], cluster(node()))
    assert pools[H100].budgeted == 8 and pools[H100].tiers == ("live",)
    assert condition(gone, pools)[:2] == ("False", "Terminating")
    assert condition(empty, pools)[:2] == ("False", "WithinCapacity")


def test_many_tiers_are_named_up_to_a_limit() -> None:
    tiers = [tier(f"t{i:02}", "reserved", {H100: 1}) for i in range(12)]
    message = condition(tiers[0], commitments(tiers, cluster()))[2]
    assert "t00, t01" in message and "t09, …" in message and "t10" not in message


# ---------------------------------------------------------------- tier status


def test_tier_status_sets_and_clears_the_condition() -> None:
    over = [tier("a", "reserved", {A100: 6}), tier("b", "reserved", {A100: 4})]
    gpus = cluster(node(A100, 4), node(A100, 4))
    status = tier_status(over[0], [], {}, now=NOW, commitments=commitments(over, gpus))
    got = {c.type: c for c in status.conditions}["Overcommitted"]
    assert (got.status, got.reason, got.last_transition_time) == ("True", "BudgetsExceedNodes", NOW)
    assert got.observed_generation == 2
    # The other conditions do not change with it.
    assert {c.type: c.status for c in status.conditions}["Degraded"] == "False"
    assert {c.type: c.status for c in status.conditions}["Ready"] == "True"

    fixed = [tier("a", "reserved", {A100: 4}, status=status.to_k8s()), over[1]]
    later = tier_status(fixed[0], [], {}, now=LATER, commitments=commitments(fixed, gpus))
    got = {c.type: c for c in later.conditions}["Overcommitted"]
    assert (got.status, got.reason, got.last_transition_time) == ("False", "WithinCapacity", LATER)


def test_unknown_nodes_keep_the_condition_as_it_was() -> None:
    t = tier("a", "reserved", {L4: 1})
    first = tier_status(t, [], {}, now=NOW, commitments=commitments([t], cluster()))
    again = tier("a", "reserved", {L4: 1}, status=first.to_k8s())
    kept = tier_status(again, [], {}, now=LATER)
    assert [c for c in kept.conditions if c.type == "Overcommitted"] == [
        c for c in first.conditions if c.type == "Overcommitted"
    ]
    # A new tier has nothing to keep; on-demand and spot tiers never carry it.
    assert "Overcommitted" not in {c.type for c in tier_status(t, [], {}, now=NOW).conditions}
    spot = tier("s", "spot", {L4: 1})
    assert "Overcommitted" not in {
        c.type for c in tier_status(spot, [], {}, now=NOW, commitments={}).conditions
    }
    was_reserved = tier("a", "spot", {L4: 1}, status=first.to_k8s())
    assert "Overcommitted" not in {
        c.type for c in tier_status(was_reserved, [], {}, now=LATER).conditions
    }


def test_status_round_trips() -> None:
    t = tier("a", "reserved", {L4: 1})
    status = tier_status(t, [], {}, now=NOW, commitments=commitments([t], cluster()))
    assert CapacityTierStatus.model_validate(status.to_k8s()) == status


# ---------------------------------------------------------------- property

PRODUCTS = (H100, A100, L4)
POOLS = (*PRODUCTS, "*")


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeGpus]:
    return draw(
        st.lists(
            st.builds(
                NodeGpus,
                product=st.sampled_from((*PRODUCTS, "")),
                gpus=st.integers(1, 8),
                schedulable=st.booleans(),
            ),
            max_size=8,
        )
    )


@st.composite
def tier_sets(draw: st.DrawFn) -> list[CapacityTier]:
    tiers = []
    for i in range(draw(st.integers(0, 5))):
        budget = draw(
            st.dictionaries(st.sampled_from(POOLS), st.integers(0, 24), min_size=1, max_size=4)
        )
        tier_class = draw(st.sampled_from(("dedicated", "reserved", "on-demand", "spot")))
        tiers.append(tier(f"t{i}", tier_class, budget))
    return tiers


def servable(demand: dict[str, int], supply: dict[str, int]) -> bool:
    """Hall's condition, checked on every subset of pools: the budgets of any set of
    pools fit the GPUs that can serve at least one of them ('*': every GPU)."""
    pools = [p for p, d in demand.items() if d > 0]
    for size in range(1, len(pools) + 1):
        for subset in combinations(pools, size):
            reachable = (
                sum(supply.values()) if "*" in subset else sum(supply.get(p, 0) for p in subset)
            )
            if sum(demand[p] for p in subset) > reachable:
                return False
    return True


@given(tier_sets(), clusters(), st.randoms())
def test_no_pool_is_overcommitted_exactly_when_the_budgets_can_be_served(
    tiers: list[CapacityTier], nodes: list[NodeGpus], rnd: Any
) -> None:
    gpus = ClusterGpus.of(nodes)
    pools = commitments(tiers, gpus)
    demand = {p: c.budgeted for p, c in pools.items()}
    assert (not any(c.overcommitted for c in pools.values())) == servable(demand, dict(gpus.usable))
    # Only dedicated and reserved tiers with a positive budget in a pool are named.
    for pool, c in pools.items():
        for name in c.tiers:
            t = next(t for t in tiers if t.name == name)
            assert t.spec.tier_class in ("dedicated", "reserved") and t.spec.gpu_budget[pool] > 0
    # Order of tiers and nodes changes nothing.
    shuffled_tiers, shuffled_nodes = list(tiers), list(nodes)
    rnd.shuffle(shuffled_tiers)
    rnd.shuffle(shuffled_nodes)
    assert commitments(shuffled_tiers, ClusterGpus.of(shuffled_nodes)) == pools
    # More GPUs never make a pool overcommitted that was not.
    more = commitments(tiers, ClusterGpus.of([*nodes, NodeGpus(H100, 8, True)]))
    assert {p for p, c in more.items() if c.overcommitted} <= {
        p for p, c in pools.items() if c.overcommitted
    }
    # Each promising tier's condition is True exactly when one of its own pools is over.
    for t in tiers:
        wanted = overcommit_condition(t, pools)
        if t.spec.tier_class in ("on-demand", "spot"):
            assert wanted is None
            continue
        assert wanted is not None
        mine = [pools[p] for p in t.spec.gpu_budget if p in pools and t.name in pools[p].tiers]
        assert (wanted[1] == "True") == any(c.overcommitted for c in mine)
