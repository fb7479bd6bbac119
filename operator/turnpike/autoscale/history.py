"""The autoscaler's memory of recent samples, small enough to live in status.

The scale-down rule needs the whole stabilization window, so an operator
restart or a leader change must not forget it: a fresh leader that had to
rebuild the window would either wait another full window (slow) or decide on
one sample (flapping). The history is therefore plain data that round-trips
exactly through a JSON dict; the policy rounds values and keeps times as
integer milliseconds *before* deciding, so a decision made on a restored
history equals the one the old leader would have made.

Pure code: no clock. ``now`` is always passed in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

ENCODING_VERSION = 1
# Entries kept at most. At ~25 bytes each this stays under ~5 KiB of status.
MAX_ENTRIES = 200
# Value precision kept (decimal places); queue depths are integers anyway.
VALUE_DIGITS = 3


class HistoryError(ValueError):
    """A stored history does not decode."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation: when (ms since the epoch), the metric, ready replicas.

    The optional fields (absent from histories written before they existed):

    * ``in_flight``: requests executing over the ready pods (None: unknown).
    * ``slots``: the most in-flight requests per ready replica seen while
      requests were waiting, carried forward from sample to sample (None:
      never seen). When requests wait, the replicas' slots are full, so this
      is an empirical per-replica capacity in the in-flight signal's own units.
    * ``change``: replicas added (> 0) or removed (< 0) by the decision
      taken on this sample.
    """

    t_ms: int
    value: float
    ready: int
    in_flight: float | None = None
    slots: float | None = None
    change: int = 0


@dataclass(frozen=True, slots=True)
class History:
    """Samples oldest first, plus when the current unbroken run of them began.

    ``since_ms`` is what lets the policy tell "below target for the whole
    window" from "below target in the few samples we happen to have": it
    resets whenever samples stop arriving for longer than the staleness limit
    (missing, stale or partial metrics), because nobody knows what the queue
    did during the gap.
    """

    metric: str = "queueDepth"
    since_ms: int | None = None
    samples: tuple[Sample, ...] = ()
    # When work was last seen (requests queued, executing, completed or held at a
    # gateway); outlives the sample window, which is shorter than the idle
    # window of scale to zero.
    busy_ms: int | None = None

    @classmethod
    def empty(cls, metric: str) -> History:
        return cls(metric=metric)

    @property
    def slots(self) -> float | None:
        """The latest empirical per-replica capacity (see :class:`Sample`)."""
        return self.samples[-1].slots if self.samples else None

    def record(self, sample: Sample, *, max_gap_ms: int) -> History:
        """Append a sample; a re-sent or older one is ignored.

        Ignoring repeats keeps a decision idempotent when the controller runs
        twice on the same scrape (a reconcile triggered by something else).
        The sample inherits the capacity carried by the previous one, raised
        to its own in-flight per replica if requests waited through the whole
        interval: at both its ends (value > 0 now and at the previous sample,
        with no gap between them). The in-flight count is a rate over the
        interval (compute time / interval), so a queue seen only at its end
        says nothing of the interval: a replica idle for 90 % of it and
        saturated at the scrape would teach 0.1 slots, and the capacity guard
        would then ask for ten times the replicas the work needs (seen on real
        Triton pods in the reaction benchmark).
        """
        if self.samples and sample.t_ms <= self.samples[-1].t_ms:
            return self
        previous = self.samples[-1] if self.samples else None
        contiguous = previous is not None and sample.t_ms - previous.t_ms <= max_gap_ms
        since = self.since_ms
        if not contiguous or since is None:
            since = sample.t_ms
        slots = _max_opt(self.slots, sample.slots)
        saturated = contiguous and previous is not None and previous.value > 0 and sample.value > 0
        if saturated and sample.in_flight is not None and sample.ready > 0:
            slots = _max_opt(slots, round_value(sample.in_flight / sample.ready))
        sample = replace(sample, slots=slots)
        return History(self.metric, since, (*self.samples, sample), self.busy_ms)

    def mark_change(self, change: int) -> History:
        """Note that the decision on the latest sample changed replicas by ``change``.

        A repeated decision on the same sample replaces the mark rather than
        adding to it, so deciding twice on one scrape is not counted twice.
        """
        if change == 0 or not self.samples:
            return self
        last = self.samples[-1]
        marked = replace(last, change=change)
        return History(self.metric, self.since_ms, (*self.samples[:-1], marked), self.busy_ms)

    def busy_at(self, t_ms: int) -> History:
        """Note work seen at ``t_ms`` (never moves the mark back)."""
        if self.busy_ms is not None and self.busy_ms >= t_ms:
            return self
        return replace(self, busy_ms=t_ms)

    def trimmed(self, *, now_ms: int, keep_ms: int, panic_ms: int) -> History:
        """Drop samples older than the longest window, then bound the length.

        The latest sample's carried capacity (``slots``) survives trimming
        because every newer sample carries it forward.

        When windows are long relative to the scrape interval, samples older
        than the panic window are merged into fixed time buckets keeping the
        maximum value and the latest time of each bucket. Both choices err
        towards keeping replicas: a peak stays visible until its whole bucket
        has left the stabilization window. The panic window, which scale-up
        averages over, stays at full resolution unless it alone exceeds the
        bound (a panic window of minutes at 1 s scrapes).
        """
        kept = tuple(s for s in self.samples if s.t_ms >= now_ms - keep_ms)
        if len(kept) > MAX_ENTRIES:
            cutoff = now_ms - panic_ms
            old = [s for s in kept if s.t_ms < cutoff]
            recent = [s for s in kept if s.t_ms >= cutoff]
            width = max(1, math.ceil(keep_ms / (MAX_ENTRIES // 2)))
            merged = [*_merge(old, width), *recent]
            while len(merged) > MAX_ENTRIES:
                width *= 2
                merged = _merge(merged, width)
            kept = tuple(merged)
        since = self.since_ms if kept else None
        return History(self.metric, since, kept, self.busy_ms)

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-ready form: times as ms offsets from the first sample.

        ``{"v": 1, "metric": "queueDepth", "t0": <ms>, "since": <ms>,
        "samples": [[dt_ms, value, ready], ...]}``

        A sample with any optional field set is written as
        ``[dt_ms, value, ready, in_flight, slots, change]`` with -1 for an
        unknown in-flight count or capacity. Decoders accept both lengths, so
        histories written before these fields existed still restore (with no
        in-flight data and no recent scale-down).
        """
        out: dict[str, Any] = {"v": ENCODING_VERSION, "metric": self.metric}
        if self.busy_ms is not None:
            out["busy"] = self.busy_ms
        if not self.samples:
            out["samples"] = []
            return out
        t0 = self.samples[0].t_ms
        out["t0"] = t0
        if self.since_ms is not None:
            out["since"] = self.since_ms
        out["samples"] = [_encode(s, t0) for s in self.samples]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """Decode :meth:`to_dict` output; raises HistoryError on anything else."""
        try:
            if data.get("v") != ENCODING_VERSION:
                raise HistoryError(f"unknown history encoding {data.get('v')!r}")
            metric = data["metric"]
            if not isinstance(metric, str):
                raise HistoryError("metric must be a string")
            raw = data.get("samples", [])
            if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
                raise HistoryError("samples must be a list of at most 200 entries")
            busy = _int(data["busy"]) if data.get("busy") is not None else None
            if not raw:
                return cls(metric=metric, busy_ms=busy)
            t0 = _int(data["t0"])
            since = _int(data["since"]) if data.get("since") is not None else None
            samples: list[Sample] = []
            for entry in raw:
                if not isinstance(entry, list | tuple) or len(entry) not in (3, 6):
                    raise HistoryError(
                        f"sample {entry!r} is not [dt_ms, value, ready(, in_flight, slots, change)]"
                    )
                value = _number(entry[1])
                ready = _int(entry[2])
                in_flight = slots = None
                change = 0
                if len(entry) == 6:
                    in_flight = _optional(entry[3])
                    slots = _optional(entry[4])
                    change = _int(entry[5])
                if value < 0 or ready < 0:
                    raise HistoryError(f"sample {entry!r} has a negative field")
                sample = Sample(t0 + _int(entry[0]), value, ready, in_flight, slots, change)
                if samples and sample.t_ms <= samples[-1].t_ms:
                    raise HistoryError("sample times must increase")
                samples.append(sample)
            return cls(metric=metric, since_ms=since, samples=tuple(samples), busy_ms=busy)
        except HistoryError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HistoryError(f"malformed history: {exc!r}") from exc

    @classmethod
    def restore(cls, data: object, metric: str) -> History:
        """Best-effort decode for a controller: anything unusable starts afresh.

        A hand-edited or foreign status must not crash reconciliation, and a
        history recorded for another metric measures something else. Starting
        empty is safe: scale-down then waits a full window.
        """
        if not isinstance(data, Mapping):
            return cls.empty(metric)
        try:
            history = cls.from_dict(data)
        except HistoryError:
            return cls.empty(metric)
        return history if history.metric == metric else cls.empty(metric)


def round_value(value: float) -> float:
    """The precision samples are stored with, applied before deciding."""
    return round(float(value), VALUE_DIGITS)


def _merge(samples: list[Sample], width_ms: int) -> list[Sample]:
    out: list[Sample] = []
    for s in samples:
        if out and out[-1].t_ms // width_ms == s.t_ms // width_ms:
            last = out[-1]
            out[-1] = Sample(
                s.t_ms,
                max(last.value, s.value),
                max(last.ready, s.ready),
                _max_opt(last.in_flight, s.in_flight),
                _max_opt(last.slots, s.slots),
                last.change + s.change,
            )
        else:
            out.append(s)
    return out


def _encode(s: Sample, t0: int) -> list[float]:
    if s.in_flight is None and s.slots is None and not s.change:
        return [s.t_ms - t0, s.value, s.ready]
    return [
        s.t_ms - t0,
        s.value,
        s.ready,
        -1 if s.in_flight is None else s.in_flight,
        -1 if s.slots is None else s.slots,
        s.change,
    ]


def _optional(value: object) -> float | None:
    """An optional non-negative number encoded with -1 for None."""
    number = _number(value)
    if number == -1:
        return None
    if number < 0:
        raise HistoryError(f"{value!r} is negative")
    return number


def _max_opt(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _int(value: object) -> int:
    if isinstance(value, bool):
        raise HistoryError(f"{value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise HistoryError(f"{value!r} is not an integer")


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HistoryError(f"{value!r} is not a number")
    if not math.isfinite(value):
        raise HistoryError(f"{value!r} is not finite")
    return float(value)
