"""The load document a gateway serves at ``/turnpike/load``, and its reader.

A deployment at zero replicas has no Triton to report a queue: the requests
waiting for it are held in the gateways. The operator polls each gateway for
this small document, sums what they hold and wakes the deployment. Both ends
live here so the format has one definition; the reader refuses nothing it can
skip (a newer gateway may add fields) and trusts nothing it reads (counts are
clamped, keys checked), because a broken gateway must not scale a fleet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnpike.gateway.metrics import Snapshot

PATH = "/turnpike/load"
VERSION = 1
MAX_COUNT = 1_000_000
MAX_DEPLOYMENTS = 100_000

Key = tuple[str, str]


def document(snapshot: Snapshot) -> dict[str, Any]:
    """``{"v": 1, "deployments": {"NS/NAME": {"held": n, "queued": n, "inFlight": n}}}``."""
    deployments: dict[str, dict[str, int]] = {}

    def entry(name: str) -> dict[str, int]:
        return deployments.setdefault(name, {"held": 0, "queued": 0, "inFlight": 0})

    for name, held in snapshot.held.items():
        entry(name)["held"] += held
    for (name, _tier), queued in snapshot.queued.items():
        entry(name)["queued"] += queued
    for (name, _tier), busy in snapshot.in_flight.items():
        entry(name)["inFlight"] += busy
    return {"v": VERSION, "deployments": dict(sorted(deployments.items()))}


def held_of(data: object) -> dict[Key, int]:
    """Held requests per (namespace, name) from one gateway's document.

    Raises ValueError for a document that is not one (wrong version or shape);
    skips entries that do not name a ``NAMESPACE/NAME`` deployment (a gateway
    with static endpoints knows no namespaces).
    """
    if not isinstance(data, Mapping) or data.get("v") != VERSION:
        raise ValueError("not a version 1 load document")
    deployments = data.get("deployments")
    if not isinstance(deployments, Mapping) or len(deployments) > MAX_DEPLOYMENTS:
        raise ValueError("deployments must be an object")
    held: dict[Key, int] = {}
    for name, counts in deployments.items():
        namespace, slash, rest = str(name).partition("/")
        if not slash or not namespace or not rest or "/" in rest:
            continue
        value = counts.get("held") if isinstance(counts, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            continue
        held[(namespace, rest)] = min(value, MAX_COUNT)
    return held
