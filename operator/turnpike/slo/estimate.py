"""Good requests per scrape interval, from Triton's cumulative counters (pure).

Triton 2.51 exports sums of latency and counts of requests, no histogram, so
the share of requests within a threshold cannot be read; it is estimated per
pod and interval from the mean (method ``tritonMean``):

* estimate: every request of an interval counts as good when the interval's
  mean is within the threshold, none when it is not. Exact whenever one
  interval's requests lie on one side of the threshold, which is what steady
  load gives on a scrape interval of seconds; wrong by at most the requests of
  the intervals whose latencies straddle the threshold (load steps).
* lower bound: by Markov's inequality at most mean/threshold of an interval's
  requests exceed the threshold, so n × max(0, 1 - mean/threshold) of them are
  good whatever their distribution. Loose (a mean of half the threshold only
  proves half), but never wrong.

Failed requests are never good. Intervals come from each pod's own previous
scrape, so requests are counted once each, whatever the pods' scrape timing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from turnpike.autoscale.signal import CounterDelta
from turnpike.slo.window import Counts

METHOD = "tritonMean"
QUEUE_WAIT = "queueWait"
REQUEST_LATENCY = "requestLatency"


@dataclass(frozen=True, slots=True)
class Interval:
    """One sampling round over a deployment's pods, reduced for the SLO."""

    counts: Counts
    # Mean (ms) of the SLO's latency over the round's completed requests, and
    # the mean queue wait among them: the part more replicas can shorten.
    latency_ms: float | None
    queue_wait_ms: float | None


def pod_counts(delta: CounterDelta, latency: str, threshold_ms: float) -> tuple[Counts, float]:
    """(counts, mean latency in ms) of one pod's interval; mean 0 when none completed."""
    if latency == QUEUE_WAIT:
        measured, spent_us = delta.completed, delta.queue_duration_us
    else:
        measured, spent_us = delta.success, delta.request_duration_us
    mean_ms = spent_us / measured / 1000.0 if measured > 0 else 0.0
    success = max(delta.success, 0.0)
    good = success if mean_ms <= threshold_ms else 0.0
    lower = success * max(0.0, 1.0 - mean_ms / threshold_ms)
    return Counts(max(delta.completed, 0.0), good, min(lower, good)), mean_ms


def interval_of(deltas: Mapping[str, CounterDelta], latency: str, threshold_ms: float) -> Interval:
    """The deployment's round: pod counts summed, latencies weighted by requests."""
    total = Counts()
    weighted = 0.0
    measured = 0.0
    waited_us = 0.0
    completed = 0.0
    for delta in deltas.values():
        counts, mean_ms = pod_counts(delta, latency, threshold_ms)
        total = total + counts
        n = delta.completed if latency == QUEUE_WAIT else delta.success
        if n > 0:
            weighted += mean_ms * n
            measured += n
        if delta.completed > 0:
            waited_us += delta.queue_duration_us
            completed += delta.completed
    return Interval(
        total,
        weighted / measured if measured > 0 else None,
        waited_us / completed / 1000.0 if completed > 0 else None,
    )
