"""Counts of good and all requests over an SLO's compliance window (pure).

Two rings of buckets keyed by epoch minute: ``fine`` holds the last hour one
minute a bucket (the burn rates' 5-minute and 1-hour windows), ``coarse``
covers the whole compliance window in at most MAX_COARSE buckets (a day is 120
buckets of 12 minutes). Both fit in status, so a restart or a new leader keeps
the window; the window's trailing edge is exact to one coarse bucket (1/120 of
the window).

Each bucket counts requests, the good ones as estimated, and a guaranteed
lower bound of the good ones (see :mod:`turnpike.slo.estimate`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ENCODING = 1
FINE_MINUTES = 60
FAST_BURN_MINUTES = 5
MAX_COARSE = 120


@dataclass(frozen=True, slots=True)
class Counts:
    requests: float = 0.0
    good: float = 0.0
    good_lower: float = 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.requests + other.requests,
            self.good + other.good,
            self.good_lower + other.good_lower,
        )

    @property
    def bad(self) -> float:
        return self.requests - self.good


def resolution_minutes(window_minutes: int) -> int:
    """Minutes per coarse bucket: the window in at most MAX_COARSE buckets."""
    return max(1, math.ceil(window_minutes / MAX_COARSE))


@dataclass(frozen=True, slots=True)
class Window:
    """Counts per minute (last hour) and per coarse bucket (whole window)."""

    key: str
    window_minutes: int
    fine: Mapping[int, Counts] = field(default_factory=dict)
    coarse: Mapping[int, Counts] = field(default_factory=dict)
    # Epoch minute of the first measurement: how much of the window is covered.
    since_minute: int | None = None

    @classmethod
    def empty(cls, key: str, window_minutes: int) -> Window:
        return cls(key, window_minutes)

    @property
    def resolution(self) -> int:
        return resolution_minutes(self.window_minutes)

    def add(self, now: float, counts: Counts) -> Window:
        """The window with ``counts`` (requests completed by ``now``, epoch seconds)."""
        minute = int(now // 60)
        bucket = minute - minute % self.resolution
        fine = dict(self.fine)
        coarse = dict(self.coarse)
        fine[minute] = fine.get(minute, Counts()) + counts
        coarse[bucket] = coarse.get(bucket, Counts()) + counts
        since = self.since_minute if self.since_minute is not None else minute
        return Window(self.key, self.window_minutes, fine, coarse, since).trimmed(now)

    def trimmed(self, now: float) -> Window:
        minute = int(now // 60)
        fine = {m: c for m, c in self.fine.items() if minute - FINE_MINUTES < m <= minute}
        first = minute - self.window_minutes + 1  # the window includes this minute
        # Buckets from the future (an edited status, a clock stepped back) are dropped.
        coarse = {b: c for b, c in self.coarse.items() if first - self.resolution < b <= minute}
        since = self.since_minute
        if since is not None and since < first:
            since = first
        return Window(self.key, self.window_minutes, fine, coarse, since)

    def total(self, now: float) -> Counts:
        """Counts over the compliance window ending at ``now``."""
        return _sum(self.trimmed(now).coarse.values())

    def recent(self, now: float, minutes: int) -> Counts:
        """Counts over the last ``minutes`` (at most FINE_MINUTES), this minute included."""
        minute = int(now // 60)
        return _sum(c for m, c in self.fine.items() if minute - minutes < m <= minute)

    def covered_minutes(self, now: float) -> float:
        if self.since_minute is None:
            return 0.0
        return float(min(self.window_minutes, max(0.0, now / 60 - self.since_minute)))

    def to_dict(self) -> dict[str, Any]:
        """The status encoding: [epoch minute, requests, good, good lower bound] rows."""
        return {
            "v": ENCODING,
            "key": self.key,
            "fine": [_row(m, c) for m, c in sorted(self.fine.items())],
            "coarse": [_row(m, c) for m, c in sorted(self.coarse.items())],
        }

    @classmethod
    def restore(
        cls, raw: Mapping[str, Any] | None, key: str, window_minutes: int, now: float
    ) -> Window:
        """The stored window, or an empty one when it measured another SLO or is unreadable.

        Rows with negative or non-finite counts, or good above requests, are
        dropped: the status is the operator's own, but it can be edited.
        """
        if not raw or raw.get("v") != ENCODING or raw.get("key") != key:
            return cls.empty(key, window_minutes)
        try:
            fine = dict(_rows(raw.get("fine") or []))
            coarse = dict(_rows(raw.get("coarse") or []))
        except (TypeError, ValueError):
            return cls.empty(key, window_minutes)
        since = min(coarse) if coarse else None
        return cls(key, window_minutes, fine, coarse, since).trimmed(now)


def _sum(counts: Iterable[Counts]) -> Counts:
    total = Counts()
    for c in counts:
        total = total + c
    return total


def _row(minute: int, c: Counts) -> list[float]:
    return [minute, round(c.requests, 3), round(c.good, 3), round(c.good_lower, 3)]


def _rows(rows: Iterable[Any]) -> Iterable[tuple[int, Counts]]:
    for row in rows:
        minute, requests, good, lower = (float(x) for x in row)
        values = (minute, requests, good, lower)
        if not all(math.isfinite(v) for v in values):
            continue
        if requests < 0 or good < 0 or lower < 0 or good > requests or lower > good:
            continue
        yield int(minute), Counts(requests, good, lower)
