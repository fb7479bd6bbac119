"""Which ready replica gets the next request.

The gateway knows its own in-flight requests per pod exactly and the Triton
queue depth only as of the last scrape, which also counts other gateway
replicas' requests. :func:`outstanding` combines the two; the pickers choose
among the candidates they are given, and only those: the caller passes the
ready pods, so a pod that is not ready can never be picked.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar


@dataclass(frozen=True, slots=True)
class QueueReading:
    """Triton's pending requests on one pod, when that was read, and how many
    requests this gateway had on that pod at that moment."""

    depth: float
    at: float
    own: float = 0.0


@dataclass(frozen=True, slots=True)
class Load:
    """What the pickers know about the candidates' work, keyed by endpoint key."""

    in_flight: Mapping[str, int] = field(default_factory=dict)
    queues: Mapping[str, QueueReading] = field(default_factory=dict)
    now: float = 0.0
    # A reading older than this says more about the past than the pod.
    max_queue_age_s: float = 5.0


def outstanding(key: str, load: Load) -> float:
    """Work a pod has: our own in-flight requests now, plus what the last scrape
    saw beyond ours then (another gateway's backlog, visible only in Triton).

    Our own count is exact and current; the scrape is up to a second old while
    a queue turns over in tens of milliseconds. Taking the larger of the two
    (the first version) let a drained pod's stale queue steer requests away
    from the idlest replica, and it lost to nginx ``least_conn`` on p99 (284 vs
    236 ms in ``make bench-gateway``). Only the scraped excess over what we
    ourselves had there at the time says something our count cannot.
    """
    own = float(load.in_flight.get(key, 0))
    reading = load.queues.get(key)
    if reading is None or load.now - reading.at > load.max_queue_age_s:
        return own
    return own + max(0.0, reading.depth - reading.own)


class Candidate(Protocol):
    @property
    def key(self) -> str: ...


C = TypeVar("C", bound=Candidate)


class Picker(Protocol):
    def pick(self, candidates: Sequence[C], load: Load) -> C:
        """One of ``candidates`` (non-empty)."""
        ...


class LeastOutstanding:
    """The candidate with the least outstanding work.

    Without an RNG every candidate is scored and ties go to the next in a
    rotating order, so an idle fleet still spreads single requests instead of
    piling them on the first pod. With an RNG, the power of two random
    choices: score two random candidates, keep the better; O(1) per request
    and nearly as good, and it avoids the herd where several gateway replicas
    with the same stale reading all pick the same "least busy" pod.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng
        self._turn = 0

    def pick(self, candidates: Sequence[C], load: Load) -> C:
        if not candidates:
            raise ValueError("no candidates")
        if self._rng is not None and len(candidates) > 2:
            first, second = self._rng.sample(range(len(candidates)), 2)
            a, b = candidates[first], candidates[second]
            return a if outstanding(a.key, load) <= outstanding(b.key, load) else b
        self._turn += 1
        n = len(candidates)
        best = None
        best_score = 0.0
        for i in range(n):
            candidate = candidates[(self._turn + i) % n]
            score = outstanding(candidate.key, load)
            if best is None or score < best_score:
                best, best_score = candidate, score
        assert best is not None
        return best


class RoundRobin:
    """Each candidate in turn, blind to load: the baseline routing is measured against."""

    def __init__(self) -> None:
        self._turn = -1

    def pick(self, candidates: Sequence[C], load: Load) -> C:
        if not candidates:
            raise ValueError("no candidates")
        self._turn += 1
        return candidates[self._turn % len(candidates)]


class Random:
    """A uniformly random candidate: what a ClusterIP Service (kube-proxy) does."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates: Sequence[C], load: Load) -> C:
        if not candidates:
            raise ValueError("no candidates")
        return candidates[self._rng.randrange(len(candidates))]


PICKERS = ("least-outstanding", "power-of-two", "round-robin", "random")


def new_picker(name: str, rng: random.Random | None = None) -> Picker:
    if name == "least-outstanding":
        return LeastOutstanding()
    if name == "power-of-two":
        return LeastOutstanding(rng or random.Random())
    if name == "round-robin":
        return RoundRobin()
    if name == "random":
        return Random(rng)
    raise ValueError(f"unknown routing {name!r}; one of {', '.join(PICKERS)}")
