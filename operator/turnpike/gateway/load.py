"""The load document a gateway serves at ``/turnpike/load``, and its reader.

A deployment at zero replicas has no Triton to report a queue: the requests
waiting for it are held in the gateways. The operator polls each gateway for
this small document, sums what they hold and wakes the deployment. Both ends
live here so the format has one definition; the reader refuses nothing it can
skip (a newer gateway may add fields) and trusts nothing it reads (counts are
clamped, keys checked), because a broken gateway must not scale a fleet.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from turnpike.gateway.metrics import Snapshot

PATH = "/turnpike/load"
VERSION = 1
MAX_COUNT = 1_000_000
MAX_DEPLOYMENTS = 100_000

Key = tuple[str, str]


@dataclass(slots=True)
class SLOCount:
    """Requests admitted to a replica, and those answered 2xx within the threshold."""

    threshold_ms: float
    requests: int = 0
    good: int = 0


@dataclass
class SLOBook:
    """Cumulative per deployment since this gateway started (``instance``); a new
    threshold starts new counters, so a count always measures one objective."""

    instance: str = field(default_factory=lambda: uuid.uuid4().hex)
    counts: dict[str, SLOCount] = field(default_factory=dict)

    def track(self, deployment: str, threshold_ms: float) -> SLOCount:
        """The deployment's count for ``threshold_ms``, at zero when new."""
        count = self.counts.get(deployment)
        if count is None or count.threshold_ms != threshold_ms:
            count = self.counts[deployment] = SLOCount(threshold_ms)
        return count

    def record(self, deployment: str, threshold_ms: float, *, good: bool) -> None:
        count = self.track(deployment, threshold_ms)
        count.requests += 1
        count.good += int(good)


@dataclass(frozen=True, slots=True)
class SLOReading:
    threshold_ms: float
    requests: int
    good: int


@dataclass(frozen=True, slots=True)
class Reading:
    """One gateway's document, as the operator reads it."""

    instance: str | None
    held: Mapping[Key, int]
    slo: Mapping[Key, SLOReading]


def document(snapshot: Snapshot, slo: SLOBook | None = None) -> dict[str, Any]:
    """``{"v": 1, "instance": ID, "deployments": {"NS/NAME": {"held": n, "queued": n,
    "inFlight": n, "slo": {"thresholdMs": t, "requests": n, "good": n}}}}``."""
    deployments: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return deployments.setdefault(name, {"held": 0, "queued": 0, "inFlight": 0})

    for name, held in snapshot.held.items():
        entry(name)["held"] += held
    for (name, _tier), queued in snapshot.queued.items():
        entry(name)["queued"] += queued
    for (name, _tier), busy in snapshot.in_flight.items():
        entry(name)["inFlight"] += busy
    out: dict[str, Any] = {"v": VERSION}
    if slo is not None:
        out["instance"] = slo.instance
        for name, count in slo.counts.items():
            entry(name)["slo"] = {
                "thresholdMs": count.threshold_ms,
                "requests": count.requests,
                "good": count.good,
            }
    out["deployments"] = dict(sorted(deployments.items()))
    return out


def read(data: object) -> Reading:
    """One gateway's document: held requests and SLO counts per (namespace, name).

    Raises ValueError for a document that is not one (wrong version or shape);
    skips entries that do not name a ``NAMESPACE/NAME`` deployment (a gateway
    with static endpoints knows no namespaces) and counts that make no sense.
    """
    if not isinstance(data, Mapping) or data.get("v") != VERSION:
        raise ValueError("not a version 1 load document")
    deployments = data.get("deployments")
    if not isinstance(deployments, Mapping) or len(deployments) > MAX_DEPLOYMENTS:
        raise ValueError("deployments must be an object")
    instance = data.get("instance")
    held: dict[Key, int] = {}
    slo: dict[Key, SLOReading] = {}
    for name, counts in deployments.items():
        namespace, slash, rest = str(name).partition("/")
        if not slash or not namespace or not rest or "/" in rest:
            continue
        if not isinstance(counts, Mapping):
            continue
        value = _count(counts.get("held"))
        if value:
            held[(namespace, rest)] = min(value, MAX_COUNT)
        measured = counts.get("slo")
        if isinstance(measured, Mapping):
            reading = _slo_reading(measured)
            if reading is not None:
                slo[(namespace, rest)] = reading
    return Reading(instance if isinstance(instance, str) else None, held, slo)


def held_of(data: object) -> dict[Key, int]:
    """Held requests per (namespace, name) from one gateway's document (see :func:`read`)."""
    return dict(read(data).held)


def _count(value: object) -> int | None:
    """A non-negative integer count, or None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**53:
        return value
    return None


def _slo_reading(measured: Mapping[str, Any]) -> SLOReading | None:
    threshold = measured.get("thresholdMs")
    requests, good = _count(measured.get("requests")), _count(measured.get("good"))
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        return None
    if not threshold > 0 or requests is None or good is None or good > requests:
        return None
    return SLOReading(float(threshold), requests, good)
