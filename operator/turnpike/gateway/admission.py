"""Admission to one deployment: slots, a weighted fair queue among tiers, shedding by tier.

A deployment has ``slots`` requests it may have in flight (ready replicas
times the per-replica limit); the rest wait in a bounded queue. The queue is
self-clocked fair queueing (SCFQ): each request gets a virtual finish tag
``max(V, tier's last tag) + cost / weight`` and the smallest tag goes next,
so while tiers are backlogged each gets its weight's share of the slots, and
a tier that was idle gets no credit to burst with later.

When the queue is full, what happens depends on whether the deployment can
still grow. If it can, the arrival gets 503 (the autoscaler is adding room;
retry soon). If it is at its maximum, someone is shed with 429: the lowest
priority among the tiers that may be shed, where a ``reserved`` tier may be
shed only once it uses more than its share. Shedding a queued request of a
lower tier to make room keeps the queue for the tiers that matter most; the
newest request of that tier goes, since it has waited least.

Pure: no clock and no I/O. The caller times requests out with ``withdraw``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from turnpike.gateway.config import Tier


class Outcome(StrEnum):
    DISPATCH = "dispatch"  # go now
    QUEUED = "queued"  # wait for ``finish``/``resize`` to dispatch it
    SHED = "shed"  # 429: the deployment is at its maximum and this tier yields
    FULL = "full"  # 503: the queue is full, the deployment is still growing


class State(StrEnum):
    QUEUED = "queued"
    IN_FLIGHT = "in_flight"
    SHED = "shed"
    DONE = "done"
    WITHDRAWN = "withdrawn"


class Ticket:
    """One request's place; compared by identity."""

    __slots__ = ("cost", "seq", "start_tag", "state", "tag", "tier")

    def __init__(self, seq: int, tier: str, cost: float, start_tag: float, tag: float) -> None:
        self.seq = seq
        self.tier = tier
        self.cost = cost
        self.start_tag = start_tag
        self.tag = tag
        self.state = State.QUEUED

    def __repr__(self) -> str:
        return f"Ticket(#{self.seq} {self.tier} {self.state})"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    ticket: Ticket | None = None
    # Queued requests of other tiers shed to make room for this one (429 each).
    evicted: tuple[Ticket, ...] = ()


class Admission:
    def __init__(
        self,
        tiers: Mapping[str, Tier],
        *,
        queue_limit: int,
        slots: int = 0,
        can_grow: bool = False,
    ) -> None:
        if not tiers:
            raise ValueError("at least one tier")
        if queue_limit < 0 or slots < 0:
            raise ValueError("queue_limit and slots must be >= 0")
        self._tiers = dict(tiers)
        self.queue_limit = queue_limit
        self.slots = slots
        self.can_grow = can_grow
        self._queues: dict[str, deque[Ticket]] = {name: deque() for name in tiers}
        self._in_flight: dict[str, int] = dict.fromkeys(tiers, 0)
        self._last_tag: dict[str, float] = dict.fromkeys(tiers, 0.0)
        self._virtual = 0.0
        self._seq = itertools.count()

    # -- reading -----------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def queued_in(self, tier: str) -> int:
        return len(self._queues[tier])

    def in_flight_in(self, tier: str) -> int:
        return self._in_flight[tier]

    def usage(self, tier: str) -> int:
        return self._in_flight[tier] + len(self._queues[tier])

    def share(self, tier: str, *, arriving: str | None = None) -> float:
        """The requests (in flight plus queued) ``tier`` is entitled to right now.

        Weights are normalised over the tiers that have work here, so an idle
        tier's share goes to the others instead of standing empty.
        """
        active = [t for t in self._tiers if self.usage(t) > 0 or t in (tier, arriving)]
        total = sum(self._tiers[t].weight for t in active)
        return self._tiers[tier].weight / total * (self.slots + self.queue_limit)

    # -- changing ----------------------------------------------------------

    def arrive(self, tier: str, cost: float = 1.0) -> Decision:
        if tier not in self._tiers:
            raise KeyError(f"unknown tier {tier!r}")
        if cost <= 0:
            raise ValueError("cost must be > 0")
        if self.in_flight < self.slots and self.queued == 0:
            ticket = self._tagged(tier, cost)
            self._start(ticket)
            return Decision(Outcome.DISPATCH, ticket)
        if self.queued < self.queue_limit:
            return Decision(Outcome.QUEUED, self._enqueue(tier, cost))
        if self.can_grow:
            return Decision(Outcome.FULL)
        victim = self._victim_tier(tier)
        if victim is None:
            return Decision(Outcome.FULL)
        if victim == tier:
            return Decision(Outcome.SHED)
        evicted = self._evict_newest(victim)
        return Decision(Outcome.QUEUED, self._enqueue(tier, cost), (evicted,))

    def finish(self, ticket: Ticket) -> list[Ticket]:
        """A dispatched request is done; returns the queued ones that may go now."""
        if ticket.state is not State.IN_FLIGHT:
            raise ValueError(f"{ticket!r} is not in flight")
        ticket.state = State.DONE
        self._in_flight[ticket.tier] -= 1
        return self._dispatch()

    def withdraw(self, ticket: Ticket) -> bool:
        """Take a queued request out (timed out, client gone); False if it is not queued."""
        if ticket.state is not State.QUEUED:
            return False
        queue = self._queues[ticket.tier]
        was_tail = queue[-1] is ticket
        queue.remove(ticket)
        ticket.state = State.WITHDRAWN
        if was_tail:
            self._rewind(ticket)
        return True

    def resize(self, slots: int, can_grow: bool) -> list[Ticket]:
        """The fleet changed; returns queued requests that may go now."""
        if slots < 0:
            raise ValueError("slots must be >= 0")
        self.slots = slots
        self.can_grow = can_grow
        return self._dispatch()

    # -- inside ------------------------------------------------------------

    def _tagged(self, tier: str, cost: float) -> Ticket:
        start = max(self._virtual, self._last_tag[tier])
        tag = start + cost / self._tiers[tier].weight
        self._last_tag[tier] = tag
        return Ticket(next(self._seq), tier, cost, start, tag)

    def _enqueue(self, tier: str, cost: float) -> Ticket:
        ticket = self._tagged(tier, cost)
        self._queues[tier].append(ticket)
        return ticket

    def _start(self, ticket: Ticket) -> None:
        ticket.state = State.IN_FLIGHT
        self._in_flight[ticket.tier] += 1
        self._virtual = max(self._virtual, ticket.tag)

    def _dispatch(self) -> list[Ticket]:
        started: list[Ticket] = []
        while self.in_flight < self.slots:
            heads = [q[0] for q in self._queues.values() if q]
            if not heads:
                break
            best = min(heads, key=lambda t: (t.tag, -self._tiers[t.tier].priority, t.seq))
            self._queues[best.tier].popleft()
            self._start(best)
            started.append(best)
        return started

    def _sheddable(self, tier: str, arriving: str) -> bool:
        """A reserved tier yields only beyond its share, counting the request at stake."""
        if not self._tiers[tier].reserved:
            return True
        usage = self.usage(tier) + (1 if tier == arriving else 0)
        return usage > self.share(tier, arriving=arriving)

    def _victim_tier(self, arriving: str) -> str | None:
        candidates: Iterable[str] = (
            t
            for t in self._tiers
            if (t == arriving or self._queues[t]) and self._sheddable(t, arriving)
        )

        def rank(t: str) -> tuple[int, float, bool, str]:
            usage = self.usage(t) + (1 if t == arriving else 0)
            over = usage / max(self.share(t, arriving=arriving), 1e-9)
            # Lowest priority first, then the tier furthest over its share, then the
            # arrival itself (rather than evict a request that is already waiting).
            return (self._tiers[t].priority, -over, t != arriving, t)

        return min(candidates, key=rank, default=None)

    def _evict_newest(self, tier: str) -> Ticket:
        ticket = self._queues[tier].pop()
        ticket.state = State.SHED
        self._rewind(ticket)
        return ticket

    def _rewind(self, ticket: Ticket) -> None:
        """A tier's last request left the queue's tail: its tag no longer holds the tier back."""
        queue = self._queues[ticket.tier]
        self._last_tag[ticket.tier] = queue[-1].tag if queue else ticket.start_tag
