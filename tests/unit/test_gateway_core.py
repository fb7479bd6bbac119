"""The gateway's small pure parts: routing, holding, buckets, tenants, config, endpoints."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from turnpike.gateway.buckets import BASE_EDGES, MAX_EDGES, bucket_edges
from turnpike.gateway.config import ConfigError, parse_config
from turnpike.gateway.endpoints import Endpoint, parse_static
from turnpike.gateway.hold import Held, HoldBook
from turnpike.gateway.routing import (
    LeastOutstanding,
    Load,
    QueueReading,
    RoundRobin,
    new_picker,
    outstanding,
)
from turnpike.gateway.tenants import Identity, Refusal, TenantBook

PODS = [Endpoint(f"127.0.0.{i}", 8000, name=f"pod-{i}") for i in range(1, 9)]

# -- routing -------------------------------------------------------------------


def test_least_outstanding_sends_to_the_less_busy_pod() -> None:
    load = Load(in_flight={"pod-1": 3, "pod-2": 1, "pod-3": 2})
    assert LeastOutstanding().pick(PODS[:3], load).name == "pod-2"


def test_a_fresh_triton_queue_counts_when_it_exceeds_our_own_count() -> None:
    load = Load(
        in_flight={"pod-1": 1, "pod-2": 2},
        queues={"pod-1": QueueReading(depth=9, at=10.0)},
        now=11.0,
    )
    assert outstanding("pod-1", load) == 10  # ours, plus another gateway's backlog
    assert LeastOutstanding().pick(PODS[:2], load).name == "pod-2"
    stale = Load(in_flight=load.in_flight, queues=load.queues, now=100.0)
    assert outstanding("pod-1", stale) == 1
    assert LeastOutstanding().pick(PODS[:2], stale).name == "pod-1"


def test_our_own_requests_in_the_triton_queue_are_not_counted_twice() -> None:
    load = Load(in_flight={"pod-1": 5}, queues={"pod-1": QueueReading(4, 0.0, own=5)}, now=0.0)
    assert outstanding("pod-1", load) == 5


def test_a_stale_queue_of_a_drained_pod_does_not_steer_requests_away() -> None:
    # A second ago pod-1 had 6 queued, all ours; they are done now. pod-2 has 2 of
    # ours in flight. The old reading must not make pod-1 look the busier.
    load = Load(
        in_flight={"pod-2": 2},
        queues={"pod-1": QueueReading(6, 0.0, own=6), "pod-2": QueueReading(1, 0.0, own=1)},
        now=1.0,
    )
    assert outstanding("pod-1", load) == 0
    assert LeastOutstanding().pick(PODS[:2], load).name == "pod-1"


def test_ties_rotate_so_an_idle_fleet_shares_single_requests() -> None:
    picker = LeastOutstanding()
    picks = Counter(picker.pick(PODS[:4], Load()).name for _ in range(40))
    assert set(picks.values()) == {10}


def test_round_robin_ignores_load() -> None:
    picker = RoundRobin()
    busy = Load(in_flight={"pod-1": 100})
    assert [picker.pick(PODS[:2], busy).name for _ in range(4)] == ["pod-1", "pod-2"] * 2


def test_an_unknown_routing_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown routing"):
        new_picker("fastest")


loads = st.dictionaries(st.sampled_from([p.name for p in PODS]), st.integers(0, 20))


@given(
    ready=st.lists(st.sampled_from(PODS), min_size=1, unique=True),
    in_flight=loads,
    queues=loads,
    name=st.sampled_from(["least-outstanding", "power-of-two", "round-robin", "random"]),
    seed=st.integers(0, 2**32),
)
def test_no_picker_ever_picks_a_pod_that_is_not_ready(
    ready: list[Endpoint],
    in_flight: dict[str, int],
    queues: dict[str, int],
    name: str,
    seed: int,
) -> None:
    load = Load(in_flight, {k: QueueReading(v, 0.0) for k, v in queues.items()}, now=1.0)
    picker = new_picker(name, random.Random(seed))
    for _ in range(5):
        chosen = picker.pick(ready, load)
        assert chosen in ready
        scores = [outstanding(p.key, load) for p in ready]
        if name == "least-outstanding":
            assert outstanding(chosen.key, load) == min(scores)
        if name == "power-of-two" and len(ready) >= 2 and scores.count(max(scores)) == 1:
            assert outstanding(chosen.key, load) < max(scores)


# -- hold ----------------------------------------------------------------------


@given(
    steps=st.lists(st.tuples(st.booleans(), st.sampled_from("ab")), max_size=100),
    limit=st.integers(0, 5),
)
def test_the_hold_is_bounded_and_counts_exactly(steps: list[tuple[bool, str]], limit: int) -> None:
    book = HoldBook()
    held: dict[str, list[Held]] = {"a": [], "b": []}
    for take, deployment in steps:
        if take:
            place = book.hold(deployment, limit)
            assert (place is None) == (len(held[deployment]) >= limit)
            if place is not None:
                held[deployment].append(place)
        elif held[deployment]:
            place = held[deployment].pop()
            book.release(place)
            book.release(place)  # twice is once
        for name in "ab":
            assert book.held(name) == len(held[name]) <= limit
    assert sum(book.counts().values()) == sum(len(v) for v in held.values())


# -- buckets -------------------------------------------------------------------


@given(st.lists(st.floats(0.0005, 3600.0), max_size=MAX_EDGES))
def test_every_slo_threshold_is_a_bucket_edge(thresholds: list[float]) -> None:
    edges = bucket_edges(thresholds)
    assert list(edges) == sorted(set(edges))
    assert len(edges) <= max(MAX_EDGES, len(BASE_EDGES))
    for threshold in thresholds:
        assert round(threshold, 9) in edges


def test_the_bucket_at_the_threshold_gives_exact_attainment() -> None:
    edges = bucket_edges([0.3])
    histogram = Histogram("lat", "", buckets=edges, registry=CollectorRegistry())
    values = [0.1, 0.29, 0.3, 0.31, 0.7, 2.0, 0.05]
    for value in values:
        histogram.observe(value)
    samples = {
        s.labels["le"]: s.value
        for s in next(iter(histogram.collect())).samples
        if s.name == "lat_bucket"
    }
    assert samples["0.3"] == sum(v <= 0.3 for v in values) == 4


# -- tenants and config ----------------------------------------------------------

CONFIG = {
    "tiers": {
        "reserved": {"priority": 10, "weight": 3, "reserved": True},
        "spot": {"priority": 0},
    },
    "tenantHeader": "X-Tenant",
    "defaultTier": "spot",
    "tenants": {
        "acme": {"tier": "reserved", "apiKeys": ["sk-acme-secret"]},
        "beta": {
            "tier": "spot",
            "apiKeySha256": [hashlib.sha256(b"sk-beta").hexdigest()],
            "headerValues": ["beta"],
        },
    },
    "deployments": {"llama": {"sloThresholdMilliseconds": 250, "queueLimit": 5}},
}


def test_tenants_by_bearer_key_header_key_hashed_key_and_header() -> None:
    book = TenantBook(parse_config(CONFIG))
    assert book.identify({"Authorization": "Bearer sk-acme-secret"}) == Identity("acme", "reserved")
    assert book.identify({"X-Api-Key": "sk-beta"}) == Identity("beta", "spot")
    assert book.identify({"X-Tenant": "beta"}) == Identity("beta", "spot")
    assert book.identify({}) == Identity("anonymous", "spot")
    assert book.identify({"Authorization": "Bearer nope"}) == Refusal(401, "unknown API key")
    assert book.identify({"X-Tenant": "nobody"}) == Refusal(403, "unknown tenant")
    assert "sk-acme" not in repr(book)


def test_without_a_default_tier_credentials_are_required() -> None:
    book = TenantBook(parse_config({**CONFIG, "defaultTier": None}))
    assert isinstance(book.identify({}), Refusal)


def test_config_limits_and_thresholds() -> None:
    config = parse_config(CONFIG)
    assert config.limits("llama").queue_limit == 5
    assert config.limits("other").queue_limit == config.defaults.queue_limit
    assert config.slo_thresholds_seconds() == (0.25,)
    assert "sk-acme-secret" not in repr(config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"defaultTier": "gold"}, "defaultTier"),
        ({"tenants": {"x": {"tier": "gold", "apiKeys": ["sk-x"]}}}, "tenants.x.tier"),
        ({"queueLimt": 3}, "queueLimt"),
        (
            {
                "tenants": {
                    "a": {"tier": "spot", "apiKeys": ["k"]},
                    "b": {"tier": "spot", "apiKeys": ["k"]},
                }
            },
            "also belongs to a",
        ),
    ],
)
def test_config_errors_name_the_field_and_never_the_key(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config({**CONFIG, **change})
    assert "sk-x" not in str(caught.value)
    assert "'k'" not in str(caught.value)


def test_static_endpoints() -> None:
    fleets = parse_static("m=127.0.0.1:8000@8002, m=127.0.0.2:8000,z=,v6=[::1]:9000")
    assert fleets["m"] == (
        Endpoint("127.0.0.1", 8000, 8002, "m-0"),
        Endpoint("127.0.0.2", 8000, None, "m-1"),
    )
    assert fleets["z"] == ()
    assert fleets["v6"][0].url("/x") == "http://[::1]:9000/x"
    for bad in ("m", "m=host", "m=h:0", "m=h:1@x", "=h:1"):
        with pytest.raises(ValueError):
            parse_static(bad)
