"""kopf handlers: every watch event updates the cache and queues a reconcile.

They are coroutines on purpose: kopf runs a plain function in a thread pool, and
the cache (and the work queue) would then change under the event loop's feet
(seen at 5,000 ModelDeployments as "dictionary changed size during iteration"
in the tier reconciler). As coroutines they run on the loop, one at a time.

Only event handlers are registered (no create/update/resume handlers, no
timers or daemons), so kopf keeps no bookkeeping in users' objects: no
last-handled-configuration annotation, no progress in status, no finalizer
that would block deletion while the operator is down.
"""

from __future__ import annotations

from typing import Any, cast

import kopf

from turnpike.api.constants import GROUP, VERSION
from turnpike.capacity.overcommit import PROMISING
from turnpike.controller.cache import Cache, owner_key
from turnpike.controller.workqueue import WorkQueue
from turnpike.kube import Kube

CHILDREN = (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("policy", "v1", "poddisruptionbudgets"),
)
# Watched only where the API exists (Cache.leaderworkersets): kopf runs with
# cluster scanning off, and a watch of a missing resource fails forever.
LEADER_WORKER_SETS = ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")

__all__ = ["build_registry", "owner_key"]


def _body(event: kopf.RawEvent) -> dict[str, Any]:
    return cast(dict[str, Any], event["object"])


def tier_version(body: dict[str, Any]) -> tuple[str, str]:
    """What deployments may run depends on a tier's spec (its generation) and on
    whether it is being deleted, never on its status."""
    metadata = body.get("metadata", {})
    return str(metadata.get("generation")), str(metadata.get("deletionTimestamp"))


def build_registry(
    kube: Kube, models: WorkQueue, tiers: WorkQueue | None, cache: Cache
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    tier_versions: dict[str, tuple[str, str]] = {}

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        creds = kube.credentials
        return kopf.ConnectionInfo(
            server=creds.server,
            ca_path=creds.ca_path,
            insecure=creds.insecure,
            scheme="Bearer" if creds.token else None,
            token=creds.token,
            certificate_path=creds.certificate_path,
            private_key_path=creds.private_key_path,
        )

    @kopf.on.event(GROUP, VERSION, "modeldeployments", registry=registry)
    async def model_deployment_event(
        type: str, event: kopf.RawEvent, namespace: str | None, name: str, **_: Any
    ) -> None:
        if namespace is None:
            return
        body = _body(event)
        own_write = type == "MODIFIED" and cache.is_own_write(body)
        cache.model_seen(type or "ADDED", body)
        if type == "DELETED":
            models.forget((namespace, name))
            if tiers is not None:
                for tier in cache.tiers:  # its GPUs are free again
                    tiers.add(("", tier))
        elif not own_write:  # our own status patch coming back tells nothing new
            models.add((namespace, name))

    @kopf.on.event(GROUP, VERSION, "capacitytiers", registry=registry)
    async def capacity_tier_event(type: str, event: kopf.RawEvent, name: str, **_: Any) -> None:
        body = _body(event)
        cache.tier_seen(type or "ADDED", body)
        if tiers is not None:  # None: a namespace-scoped operator leaves tiers alone
            tiers.add(("", name))
        # A new budget, class or default changes what every deployment may run; a
        # status write (the tier reconciler's, after any grant moved) changes nothing,
        # and requeueing the fleet on each would make a fleet's scale-up quadratic.
        # (Compared with the last event, not the cache: the tier reconciler also
        # writes fresher reads into the cache.)
        version = tier_version(body)
        if type == "DELETED":
            tier_versions.pop(name, None)
        elif tier_versions.get(name) == version:
            return
        else:
            tier_versions[name] = version
        if tiers is not None:
            # Dedicated and reserved budgets are compared with the nodes' GPUs all
            # together (Overcommitted): one tier's budget or class changes the others'.
            for other, other_body in list(cache.tiers.items()):
                if (other_body.get("spec") or {}).get("class") in PROMISING:
                    tiers.add(("", other))
        for key in list(cache.models):
            models.add(key)

    children = (*CHILDREN, LEADER_WORKER_SETS) if cache.leaderworkersets else CHILDREN
    for group, version, plural in children:
        # Children are recognised by their controller reference, not by a label
        # filter: kopf filters labels on its side, so a child whose label someone
        # removed would vanish from the cache's view without being repaired.
        @kopf.on.event(group, version, plural, registry=registry)
        async def child_event(type: str, event: kopf.RawEvent, **_: Any) -> None:
            body = _body(event)
            key = owner_key(body)
            if key is None:
                return
            cache.child_seen(type or "ADDED", body)
            models.add(key)

    return registry
