"""Reconcile one ModelDeployment: observe, ask the core, apply, report.

Level-triggered: the same function runs for create, update, resume after a
restart, child drift, the periodic resync and every autoscaling tick, and it
writes only what differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from turnpike.api.modeldeployment import ModelDeployment
from turnpike.api.status import ModelDeploymentStatus
from turnpike.api.uris import redact_userinfo
from turnpike.capacity.meter import USAGE_FLUSH_MS
from turnpike.controller.autoscaler import Autoscaler, Tick
from turnpike.controller.cache import Cache
from turnpike.controller.capacity import CapacityGate, Verdict
from turnpike.controller.events import post_event
from turnpike.controller.metering import GpuMeter
from turnpike.controller.metrics import Metrics
from turnpike.controller.mpikeys import generate_mpi_keys
from turnpike.kube import ApiError, KubeAPI
from turnpike.kube.resources import MODEL_DEPLOYMENT, POD, SECRET, resource_for
from turnpike.reconcile.children import desired_children, desired_replicas, is_workload
from turnpike.reconcile.diff import merge_patch
from turnpike.reconcile.plan import (
    Observed,
    Plan,
    Scaling,
    after_apply,
    needs_pods,
    plan,
    rfc3339,
    transition_events,
)
from turnpike.reconcile.validation import (
    missing_secrets_problem,
    parse_model_deployment,
    referenced_secrets,
)
from turnpike.render import selector
from turnpike.render.mpikeys import MpiKeys, keys_from_secret, secret_name
from turnpike.status import Problem, parse_status
from turnpike.status.modeldeployment import failed_status

log = logging.getLogger(__name__)
Key = tuple[str, str]

# Failures of the shell (the API server or the network) are retried by the work
# queue with backoff; anything else that escapes a reconcile is a bug in the
# core and becomes this Degraded condition instead of an endless retry loop.
TRANSIENT_ERRORS = (ApiError, aiohttp.ClientError, OSError, asyncio.TimeoutError)
NO_LEADERWORKERSET = Problem(
    "LeaderWorkerSetMissing",
    "gpu.nodesPerReplica above 1 runs each replica as a LeaderWorkerSet group, and the "
    "LeaderWorkerSet API (leaderworkerset.x-k8s.io/v1) is not installed in this cluster: "
    "install the LWS controller (sigs.k8s.io/lws), then restart the operator",
)


def secret_name_taken(name: str) -> Problem:
    return Problem(
        "SecretNameTaken",
        f"Secret {name} holds the ssh keys of this multi-node ModelDeployment, but a Secret "
        "of that name exists that this ModelDeployment does not own; the operator leaves "
        "it alone: rename or delete it",
    )


def controlled_by(obj: dict[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == uid for r in refs)


INTERNAL_ERROR = Problem(
    "InternalError",
    "the operator could not reconcile this ModelDeployment because of an internal error "
    "(its log has the details); running pods are left as they are and it retries at the "
    "next resync",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ModelDeploymentReconciler:
    kube: KubeAPI
    metrics: Metrics
    resync_seconds: float = 60.0
    autoscaler: Autoscaler | None = None
    gate: CapacityGate | None = None
    cache: Cache | None = None
    on_tier_change: Callable[[str], None] | None = None
    clock: Callable[[], datetime] = utcnow
    meter: GpuMeter | None = None
    # The key Secret of each multi-node ModelDeployment as last read, and when.
    # Secrets are not watched and an autoscaled deployment reconciles every scrape
    # interval, so it is read again once per resync period: a deleted or edited
    # Secret is repaired within one.
    _key_secrets: dict[Key, tuple[datetime, dict[str, Any]]] = field(default_factory=dict)

    async def __call__(self, key: Key) -> float | None:
        return await self.metrics.measured("ModelDeployment", lambda: self.reconcile(key))

    async def reconcile(self, key: Key) -> float | None:
        try:
            return await self._reconcile(key)
        except ApiError as error:
            if error.namespace_terminating:
                return None  # the namespace and this object are on their way out
            raise
        except TRANSIENT_ERRORS:
            raise
        except Exception as error:
            await self._report_internal_error(key, error)
            return self.resync_seconds

    async def _report_internal_error(self, key: Key, error: Exception) -> None:
        """Log the bug (credentials in URLs redacted) and say Degraded=True on the object."""
        self.metrics.internal_errors.labels("ModelDeployment").inc()
        details = redact_userinfo("".join(traceback.format_exception(error)))
        log.error("reconcile of %s/%s failed with an internal error:\n%s", *key, details)
        body = await self.kube.get(MODEL_DEPLOYMENT, *key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        previous = parse_status(body.get("status"))
        generation = int(body["metadata"].get("generation", 0))
        now = self.clock()
        status = failed_status(previous, generation, INTERNAL_ERROR, rfc3339(now))
        failed = Plan(None, status=status, events=transition_events(previous, status))
        await self._carry_out(body, previous, failed, now)

    async def _reconcile(self, key: Key) -> float | None:
        """Gather what plan() needs, ask it, carry out its writes."""
        namespace, name = key
        # Read from the watch's cache like the children: a GET per reconcile would
        # put one more round trip before every apply. Without a cache, ask the server.
        body = (
            self.cache.model(key)
            if self.cache is not None
            else await self.kube.get(MODEL_DEPLOYMENT, namespace, name)
        )
        if body is None or body["metadata"].get("deletionTimestamp"):
            if self.autoscaler is not None:
                self.autoscaler.forget(key)
            if self.meter is not None:
                self.meter.forget(key)
            self._key_secrets.pop(key, None)
            return None  # children go with it through ownerReferences
        previous = parse_status(body.get("status"))
        now = self.clock()
        parsed = parse_model_deployment(body)
        if isinstance(parsed, Problem):
            result = plan(Observed(body, parsed, previous, now))
            await self._carry_out(body, previous, result, now)
            return self.resync_seconds
        md = parsed

        problem = await self._missing_secrets(namespace, referenced_secrets(md))
        if md.spec.gpu.multi_node and self.cache is not None and not self.cache.leaderworkersets:
            problem = problem or NO_LEADERWORKERSET
        current = desired_replicas(md, previous.desired_replicas)
        autoscaled = md.spec.autoscaling.enabled and problem is None
        measured = autoscaled or (md.spec.slo is not None and problem is None)
        reading = None
        if self.autoscaler is not None:
            if measured:  # I/O before the lock
                reading = await self.autoscaler.read(key, md, previous, autoscaled=autoscaled)
            else:
                self.autoscaler.forget(key)
        children = await self._children(key, md, body["metadata"]["uid"])
        mpi_keys: MpiKeys | None = None
        if md.spec.gpu.multi_node:
            live_secret = await self._key_secret(key, md)
            if live_secret is not None and not controlled_by(live_secret, body["metadata"]["uid"]):
                problem = problem or secret_name_taken(secret_name(md))
            else:
                mpi_keys = self._mpi_keys(md, live_secret)
                if live_secret is not None:
                    children = [*children, live_secret]

        async with self._capacity(body, md) as verdict:
            tick: Tick | None = None
            if self.autoscaler is not None and reading is not None and autoscaled:
                # The tier's cap goes into the decision, so status.lastScale and the
                # history record what the tier grants, not what was wished for.
                tick = self.autoscaler.decide(key, md, reading, current, budget=verdict.cap)
            pods = tick.pods if tick is not None else None
            live_deployment = next((c for c in children if is_workload(c)), None)
            # A multi-node deployment always reads its pods: status.groups names the
            # pod holding each group back and counts restarts (from the cache: cheap).
            if pods is None and (needs_pods(live_deployment) or md.spec.gpu.multi_node):
                if self.cache is not None and self.cache.pods_synced:
                    pods = self.cache.pods_of(namespace, name)
                else:
                    pods = await self.kube.list(POD, namespace, label_selector=selector(md))
            tier_name = verdict.tier.name if verdict.tier is not None else None
            usage = (
                self.meter.observe(key, md, previous, tier_name) if self.meter is not None else None
            )
            result = plan(
                Observed(
                    body,
                    md,
                    previous,
                    now,
                    problem=problem or verdict.problem,
                    scaling=Scaling(tick.decision, tick.flush) if tick is not None else None,
                    tier=verdict.tier.name if verdict.tier is not None else None,
                    allocate=verdict.allocate,
                    placement=verdict.placement,
                    children=children,
                    pods=pods,
                    slo=reading.slo if reading is not None else None,
                    usage=usage,
                    usage_flush_ms=self.meter.flush_ms
                    if self.meter is not None
                    else USAGE_FLUSH_MS,
                    mpi_keys=mpi_keys,
                )
            )
            if self.meter is not None:
                self.meter.served(key, reading.observation if reading is not None else None)
                if result.replicas is not None:
                    self.meter.granted(key, result.replicas * md.spec.gpu.per_replica)
            if self.cache is not None:
                # What is about to be granted enters the tier's sums before the lock
                # is released, so the next evaluation of the tier counts it, and the
                # lock is never held across a round trip to the API server.
                for child in result.apply:
                    if is_workload(child):
                        before = next(
                            (
                                c
                                for c in children
                                if c["kind"] == child["kind"]
                                and c["metadata"]["name"] == child["metadata"]["name"]
                            ),
                            None,
                        )
                        self.cache.granting(key, after_apply(child, before))
        await self._apply(key, result.apply)
        await self._carry_out(body, previous, result, now)
        if result.tier_changed and self.on_tier_change is not None and verdict.tier is not None:
            self.on_tier_change(verdict.tier.name)
        if reading is not None:
            return float(md.spec.autoscaling.scrape_interval_seconds)
        return self.resync_seconds

    def _capacity(
        self, body: dict[str, Any], md: ModelDeployment
    ) -> contextlib.AbstractAsyncContextManager[Verdict]:
        if self.gate is None:
            return contextlib.nullcontext(Verdict(None, None))
        return self.gate.evaluate(body, md)

    async def _children(self, key: Key, md: ModelDeployment, uid: str) -> list[dict[str, Any]]:
        """Every live child the ModelDeployment controls: from the watch's cache, or,
        without one, the children of the names this version renders."""
        if self.cache is not None:
            return self.cache.owned_children(key)
        lives = await asyncio.gather(
            *(
                self.kube.get(resource_for(c), key[0], c["metadata"]["name"])
                for c in desired_children(md, 0, uid)
            )
        )
        return [live for live in lives if live is not None]

    async def _apply(self, key: Key, children: list[dict[str, Any]]) -> None:
        try:
            applied = await asyncio.gather(*(self.kube.apply(child) for child in children))
        except BaseException:
            if self.cache is not None:
                self.cache.granted(key, None)  # not applied: count what runs
            raise
        for child, after in zip(children, applied, strict=True):
            self.metrics.children_applied.labels(child["kind"]).inc()
            if self.cache is not None and is_workload(child):
                # Written through so that capacity counts the server's answer.
                self.cache.granted(key, after)

    async def _carry_out(
        self,
        body: dict[str, Any],
        previous: ModelDeploymentStatus,
        result: Plan,
        now: datetime,
    ) -> None:
        """The plan's deletes, status and Events (its applies ran under the tier's lock)."""
        namespace = body["metadata"]["namespace"]
        for child in result.delete:
            with contextlib.suppress(ApiError):  # gone already: what was wanted
                await self.kube.delete(resource_for(child), namespace, child["metadata"]["name"])
        # Status and Events are independent writes: sent together, a worker waits
        # for one round trip instead of one per write.
        await asyncio.gather(
            self._write_status(body, previous, result.status),
            *(
                post_event(self.kube, body, event.type, event.reason, event.message, now)
                for event in result.events
            ),
        )

    async def _key_secret(self, key: Key, md: ModelDeployment) -> dict[str, Any] | None:
        now = self.clock()
        held = self._key_secrets.get(key)
        if held is not None and (now - held[0]).total_seconds() < self.resync_seconds:
            return held[1]
        live = await self.kube.get(SECRET, key[0], secret_name(md))
        if live is None:
            self._key_secrets.pop(key, None)
        else:
            self._key_secrets[key] = (now, live)
        return live

    @staticmethod
    def _mpi_keys(md: ModelDeployment, live: dict[str, Any] | None) -> MpiKeys:
        """The key set of the live Secret (read by name: Secrets are not watched),
        or a fresh one when it is missing or incomplete."""
        keys = keys_from_secret(live)
        if keys is None:
            keys = generate_mpi_keys(f"{md.metadata.namespace}/{md.metadata.name}")
        return keys

    async def _missing_secrets(self, namespace: str, names: list[str]) -> Problem | None:
        missing = [n for n in names if await self.kube.get(SECRET, namespace, n) is None]
        return missing_secrets_problem(missing)

    async def _write_status(
        self,
        body: dict[str, Any],
        previous: ModelDeploymentStatus,
        status: ModelDeploymentStatus,
    ) -> None:
        if status == previous:
            return
        metadata = body["metadata"]
        # A merge patch leaves out what became unset, at any depth; null it explicitly.
        patch = merge_patch(previous.to_k8s(), status.to_k8s())
        written = await self.kube.patch_status(
            MODEL_DEPLOYMENT, metadata["namespace"], metadata["name"], patch
        )
        if self.cache is not None:
            self.cache.status_written((metadata["namespace"], metadata["name"]), written)
