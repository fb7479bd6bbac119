"""Leader election: at most one replica reconciles, and a standby takes over when it should.

The pure rules (`may_take`, `held_lease`) are checked on their own; `LeaderElector`
runs against an in-memory API server that refuses stale and duplicate writes as
the real one does. Time is an injected clock that the tests move, so no test
waits for a lease to run out; the electors' real waits are a millisecond.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import pytest

from tests.unit.fakekube import FakeKube, status_error
from turnpike.controller.leader import MICRO, LeaderElector, held_lease, may_take
from turnpike.kube import Kube

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
NAME, NAMESPACE = "turnpike-leader", "turnpike-system"
KEY = ("Lease", NAMESPACE, NAME)
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 2.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).strftime(MICRO)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def lease(holder: str | None, renewed: str | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "resourceVersion": "7"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": renewed,
            **spec,
        },
    }


def elector(kube: FakeKube, identity: str, clock: Clock, retry: float = 0.001) -> LeaderElector:
    return LeaderElector(
        cast(Kube, kube),
        NAME,
        NAMESPACE,
        identity,
        lease_seconds=15,
        renew_seconds=0.001,
        retry_seconds=retry,
        clock=clock,
    )


def spec_of(kube: FakeKube) -> dict[str, Any]:
    found: dict[str, Any] = kube.objects[KEY]["spec"]
    return found


@pytest.mark.parametrize(
    ("current", "seconds", "free"),
    [
        (None, 0, True),
        (lease("a", stamp(0)), 1, False),
        (lease("a", stamp(0)), 15, False),  # held through its whole duration
        (lease("a", stamp(0)), 16, True),
        (lease("b", stamp(0)), 1, True),  # its own lease: renew
        (lease(None, stamp(0)), 1, True),  # released
        (lease("", stamp(0)), 1, True),
        (lease("a", acquireTime=stamp(0)), 1, False),  # never renewed: acquireTime counts
        (lease("a", acquireTime=stamp(0)), 16, True),
        (lease("a", "2026-12-02T09:00:00Z"), 1, False),  # a stamp without fraction
    ],
    ids=[
        "none",
        "fresh",
        "at-expiry",
        "expired",
        "own",
        "released",
        "empty-holder",
        "acquired",
        "acquired-expired",
        "seconds-stamp",
    ],
)
def test_who_may_take_the_lease(current: dict[str, Any] | None, seconds: int, free: bool) -> None:
    assert may_take(current, "b", at(seconds)) is free


def test_the_first_holder_creates_a_fresh_lease() -> None:
    wanted = held_lease(NAME, NAMESPACE, "a", 15, T0, None)
    assert "resourceVersion" not in wanted["metadata"]  # a create, not a replace
    assert wanted["spec"] == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": stamp(0),
        "renewTime": stamp(0),
        "leaseTransitions": 0,
    }


def test_a_renewal_moves_only_the_renew_time() -> None:
    previous = lease("a", stamp(0), acquireTime=stamp(-60), leaseTransitions=2)
    before = copy.deepcopy(previous)
    wanted = held_lease(NAME, NAMESPACE, "a", 15, at(5), previous)
    assert wanted["metadata"]["resourceVersion"] == "7"  # a conditional write
    assert wanted["spec"]["renewTime"] == stamp(5)
    assert wanted["spec"]["acquireTime"] == stamp(-60)
    assert wanted["spec"]["leaseTransitions"] == 2
    assert previous == before  # what was read is not modified


@pytest.mark.parametrize("holder", ["a", None], ids=["taken-over", "after-release"])
def test_a_new_holder_counts_a_transition(holder: str | None) -> None:
    previous = lease(holder, stamp(0), acquireTime=stamp(-60), leaseTransitions=2)
    wanted = held_lease(NAME, NAMESPACE, "b", 15, at(20), previous)
    assert wanted["spec"]["holderIdentity"] == "b"
    assert wanted["spec"]["acquireTime"] == stamp(20)
    assert wanted["spec"]["leaseTransitions"] == 3


@pytest.mark.parametrize("existing", [False, True], ids=["no-lease", "expired-lease"])
def test_of_two_racing_replicas_exactly_one_becomes_leader(existing: bool) -> None:
    kube, clock = FakeKube(), Clock()
    if existing:
        kube.put(lease("old", stamp(-60)))

    async def race() -> list[bool]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(elector(kube, i, clock).acquire(stop)) for i in "ab"]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        return [await task for task in tasks]

    won = run(race())
    assert sorted(won) == [False, True]
    assert spec_of(kube)["holderIdentity"] == ("a" if won[0] else "b")
    # Both read before either wrote: the loser's write was refused, not skipped.
    assert kube.refused == ["Conflict" if existing else "AlreadyExists"]


def test_a_standby_takes_over_only_after_the_lease_expires() -> None:
    kube, clock = FakeKube(), Clock()
    assert run(elector(kube, "a", clock).acquire(asyncio.Event()))
    kube.calls.clear()

    def five_seconds_later(method: str) -> None:
        if method == "get":
            clock.advance(5)

    kube.before = five_seconds_later
    assert run(elector(kube, "b", clock).acquire(asyncio.Event()))
    assert kube.calls.count("get") == 4  # +5, +10, +15 still a's; +20 expired
    assert spec_of(kube)["acquireTime"] == stamp(20)
    assert spec_of(kube)["leaseTransitions"] == 1


def test_release_lets_a_standby_take_over_at_once() -> None:
    kube, clock = FakeKube(), Clock()
    a = elector(kube, "a", clock)
    assert run(a.acquire(asyncio.Event()))
    run(a.release())
    clock.advance(1)
    kube.calls.clear()
    assert run(elector(kube, "b", clock).acquire(asyncio.Event()))
    assert kube.calls == ["get", "replace"]


def test_release_by_a_replica_that_lost_the_lease_leaves_the_new_holder_alone() -> None:
    kube, clock = FakeKube(), Clock()
    a = elector(kube, "a", clock)
    assert run(a.acquire(asyncio.Event()))
    clock.advance(20)
    assert run(elector(kube, "b", clock).acquire(asyncio.Event()))
    run(a.release())
    assert spec_of(kube)["holderIdentity"] == "b"


def test_the_leader_renews_so_a_standby_cannot_take_over() -> None:
    kube, clock = FakeKube(), Clock()
    a = elector(kube, "a", clock)
    assert run(a.acquire(asyncio.Event()))
    stop = asyncio.Event()

    def four_seconds_later(method: str) -> None:
        if method == "get":
            clock.advance(4)
            if clock.now >= at(32):  # twice the lease duration
                stop.set()

    kube.before = four_seconds_later
    run(a.keep(stop))
    assert spec_of(kube)["renewTime"] == stamp(32)
    assert not may_take(kube.objects[KEY], "b", clock.now)


@pytest.mark.parametrize(
    "error",
    [
        lambda: status_error(500, "InternalError", "etcdserver: request timed out", lease(None)),
        lambda: ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=["api-error", "os-error"],
)
def test_the_leader_steps_down_when_renewals_fail_past_two_thirds_of_the_lease(
    error: Any,
) -> None:
    kube, clock = FakeKube(), Clock()
    a = elector(kube, "a", clock)
    assert run(a.acquire(asyncio.Event()))
    kube.calls.clear()

    def failing_after_twelve_seconds(method: str) -> None:
        if method == "get":
            clock.advance(4)
        if clock.now > at(12):
            raise error()

    kube.before = failing_after_twelve_seconds
    run(a.keep(asyncio.Event()))  # returns by itself, or times out
    # Renewed at 4, 8 and 12 s; failures at 16 and 20 s are within 10 s (2/3 of 15) of the
    # last renewal, the one at 24 s is not.
    assert kube.calls == ["get", "replace"] * 3 + ["get"] * 3


def test_the_leader_steps_down_when_another_replica_holds_the_lease() -> None:
    """Say this replica was paused past its lease and a standby took over meanwhile."""
    kube, clock = FakeKube(), Clock()
    a = elector(kube, "a", clock)
    assert run(a.acquire(asyncio.Event()))
    clock.advance(20)
    assert run(elector(kube, "b", clock).acquire(asyncio.Event()))
    kube.calls.clear()
    run(a.keep(asyncio.Event()))
    assert kube.calls == ["get"]  # it looked, and wrote nothing
    assert spec_of(kube)["holderIdentity"] == "b"


def test_the_leader_steps_down_at_once_when_it_loses_a_write_race() -> None:
    kube, clock = FakeKube(), Clock()
    a = elector(kube, "a", clock)
    assert run(a.acquire(asyncio.Event()))

    def another_writes_first(method: str) -> None:
        if method == "replace":
            kube.before = None
            kube.put(lease("b", clock.now.strftime(MICRO)))

    kube.before = another_writes_first
    kube.calls.clear()
    run(a.keep(asyncio.Event()))
    assert kube.calls == ["get", "replace"]  # the 409 means lost: no further attempt
    assert kube.refused == ["Conflict"]
    assert spec_of(kube)["holderIdentity"] == "b"


def test_acquire_rides_out_api_errors() -> None:
    kube, clock = FakeKube(), Clock()
    errors: list[Exception] = [
        status_error(500, "InternalError", "etcdserver: leader changed", lease(None)),
        ConnectionResetError(104, "Connection reset by peer"),
    ]

    def flaky(method: str) -> None:
        if errors:
            raise errors.pop(0)

    kube.before = flaky
    assert run(elector(kube, "a", clock).acquire(asyncio.Event()))
    assert spec_of(kube)["holderIdentity"] == "a"


def test_acquire_gives_up_when_stop_is_set() -> None:
    """Shutdown must not wait out a retry interval (here a minute) or take the lease."""
    kube, clock = FakeKube(), Clock()
    assert run(elector(kube, "a", clock).acquire(asyncio.Event()))
    b = elector(kube, "b", clock, retry=60.0)

    async def stopped_while_waiting() -> tuple[bool, bool]:
        stop = asyncio.Event()
        waiting = asyncio.create_task(b.acquire(stop))
        while "get" not in kube.calls:
            await asyncio.sleep(0)
        stop.set()
        return await asyncio.wait_for(waiting, 1.0), await b.acquire(stop)

    kube.calls.clear()
    assert run(stopped_while_waiting()) == (False, False)
    assert "replace" not in kube.calls
    assert spec_of(kube)["holderIdentity"] == "a"


def test_the_leader_steps_down_when_a_renewal_hangs() -> None:
    """A partitioned API server may accept the connection and never answer: the
    renewal is bounded by the time left before the leader must step down."""
    kube = FakeKube()
    a = LeaderElector(cast(Kube, kube), NAME, NAMESPACE, "a", lease_seconds=1,
                      renew_seconds=0.05, retry_seconds=0.01)
    assert run(a.acquire(asyncio.Event()))

    async def hangs(_: dict[str, Any]) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    kube.replace = hangs  # type: ignore[method-assign]
    started = time.monotonic()
    run(a.keep(asyncio.Event()))  # returns by itself, or run() times out after 5 s
    assert time.monotonic() - started < 2
