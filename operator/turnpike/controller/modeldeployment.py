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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from turnpike.api.modeldeployment import ModelDeployment
from turnpike.api.status import ConditionStatus, ModelDeploymentStatus
from turnpike.api.uris import redact_userinfo
from turnpike.capacity import Allocation
from turnpike.controller.autoscaler import Autoscaler, Tick, history_status
from turnpike.controller.cache import Cache
from turnpike.controller.capacity import CapacityGate, Verdict
from turnpike.controller.events import post_event
from turnpike.controller.metrics import Metrics
from turnpike.kube import ApiError, Kube
from turnpike.kube.resources import MODEL_DEPLOYMENT, POD, SECRET, resource_for
from turnpike.reconcile.children import desired_children, desired_replicas, too_large
from turnpike.reconcile.diff import needs_apply
from turnpike.reconcile.validation import (
    missing_secrets_problem,
    parse_model_deployment,
    referenced_secrets,
)
from turnpike.render import endpoint, selector
from turnpike.status import Problem, condition, next_status, parse_status
from turnpike.status.conditions import model_conditions, rollout_of, unschedulable_reason
from turnpike.status.modeldeployment import failed_status

log = logging.getLogger(__name__)
Key = tuple[str, str]
Wanted = list[tuple[str, ConditionStatus, str, str]]

# Failures of the shell (the API server or the network) are retried by the work
# queue with backoff; anything else that escapes a reconcile is a bug in the
# core and becomes this Degraded condition instead of an endless retry loop.
TRANSIENT_ERRORS = (ApiError, aiohttp.ClientError, OSError, asyncio.TimeoutError)
INTERNAL_ERROR = Problem(
    "InternalError",
    "the operator could not reconcile this ModelDeployment because of an internal error "
    "(its log has the details); running pods are left as they are and it retries at the "
    "next resync",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def metrics_condition(tick: Tick) -> tuple[ConditionStatus, str, str]:
    """MetricsAvailable: missing or stale metrics hold the count and say so."""
    if tick.decision.metrics_stale:
        return ("False", "MetricsUnavailable", tick.decision.reason)
    if tick.decision.metrics_partial:
        return ("True", "PartialMetrics", tick.decision.reason)
    return ("True", "MetricsRead", "")


def capacity_condition(allocation: Allocation) -> tuple[bool, str, str]:
    """CapacityAvailable: what the tier granted, and how rollouts proceed within it."""
    message = allocation.message
    if not allocation.can_surge:
        message += (
            "; no GPUs left in the tier for a rollout's extra replica, so rollouts replace "
            "one replica at a time (maxSurge 0, maxUnavailable 1)"
        )
    return (not allocation.limited, allocation.reason, message)


@dataclass
class ModelDeploymentReconciler:
    kube: Kube
    metrics: Metrics
    resync_seconds: float = 60.0
    autoscaler: Autoscaler | None = None
    gate: CapacityGate | None = None
    cache: Cache | None = None
    on_tier_change: Callable[[str], None] | None = None
    clock: Callable[[], datetime] = utcnow

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
        await self._write_status(body, previous, status, now)

    async def _reconcile(self, key: Key) -> float | None:
        namespace, name = key
        body = await self.kube.get(MODEL_DEPLOYMENT, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            if self.autoscaler is not None:
                self.autoscaler.forget(key)
            return None  # children go with it through ownerReferences
        generation = int(body["metadata"].get("generation", 0))
        previous = parse_status(body.get("status"))
        now = self.clock()

        parsed = parse_model_deployment(body)
        if isinstance(parsed, Problem):
            status = next_status(
                previous,
                generation,
                previous.desired_replicas or 0,
                None,
                parsed,
                rfc3339(now),
                endpoint=None,
                selector=None,
                gpus_per_replica=None,
            )
            await self._write_status(body, previous, status, now)
            return self.resync_seconds
        md = parsed

        problem = await self._missing_secrets(namespace, referenced_secrets(md))
        current = desired_replicas(md, previous.desired_replicas)
        autoscaled = md.spec.autoscaling.enabled and problem is None
        reading = None
        if self.autoscaler is not None:
            if autoscaled:
                reading = await self.autoscaler.read(key, md, previous)  # I/O before the lock
            else:
                self.autoscaler.forget(key)

        tick: Tick | None = None
        async with self._capacity(body, md) as verdict:
            problem = problem or verdict.problem
            wanted_replicas = current
            if self.autoscaler is not None and reading is not None:
                # The tier's cap goes into the decision, so status.lastScale and the
                # history record what the tier grants, not what was wished for.
                tick = self.autoscaler.decide(key, md, reading, current, budget=verdict.cap)
                wanted_replicas = tick.decision.replicas
            # The condition reports what was asked for: a wish the budget capped is
            # BudgetExhausted, though the decision already holds at what fits.
            asked = wanted_replicas
            if tick is not None and tick.decision.wanted is not None:
                asked = max(asked, tick.decision.wanted)
            allocation = verdict.allocate(asked) if verdict.allocate else None
            replicas = (
                min(allocation.max_replicas, wanted_replicas)
                if allocation is not None
                else wanted_replicas
            )
            placement = verdict.placement
            children = desired_children(
                md,
                replicas,
                body["metadata"]["uid"],
                priority_class=placement.priority_class if placement else None,
                node_selector=placement.node_selector if placement else None,
                tolerations=placement.tolerations if placement else None,
                surge=allocation.can_surge if allocation is not None else True,
            )
            problem = problem or too_large(children)
            deployment = await self._apply_children(body, children, problem, now)
        if (
            verdict.tier is not None
            and self.on_tier_change is not None
            and (replicas != previous.desired_replicas or previous.tier != verdict.tier.name)
        ):
            self.on_tier_change(verdict.tier.name)

        rollout = rollout_of(deployment, replicas)
        pending = None
        if rollout is not None and rollout.ready < rollout.desired:
            pods = tick.pods if tick is not None else None
            if pods is None:
                pods = await self.kube.list(POD, namespace, label_selector=selector(md))
            pending = unschedulable_reason(pods)
        wanted = model_conditions(
            generation,
            rollout,
            problem,
            pending=pending,
            capacity=capacity_condition(allocation) if allocation is not None else None,
            metrics=metrics_condition(tick) if tick is not None else None,
        )
        status = next_status(
            previous,
            generation,
            replicas,
            deployment,
            problem,
            rfc3339(now),
            endpoint=endpoint(md),
            selector=selector(md),
            gpus_per_replica=md.spec.gpu.per_replica,
            conditions=wanted,
        )
        update: dict[str, Any] = {"tier": verdict.tier.name if verdict.tier else None}
        if tick is not None:
            update.update(self._autoscaling_fields(previous, tick, now))
        else:
            update.update(queue_depth=None, autoscaler=None)
        status = status.model_copy(update=update)
        await self._write_status(body, previous, status, now)
        if tick is not None and tick.decision.changed and replicas != previous.desired_replicas:
            reason = "ScaledUp" if replicas > (previous.desired_replicas or 0) else "ScaledDown"
            message = tick.decision.reason
            if allocation is not None and allocation.limited:
                message += f"; capped by CapacityTier {verdict.tier.name if verdict.tier else ''}"
                message += f": {allocation.message}"
            await post_event(self.kube, body, "Normal", reason, message, now)
        if tick is not None:
            return float(md.spec.autoscaling.scrape_interval_seconds)
        return self.resync_seconds

    def _capacity(
        self, body: dict[str, Any], md: ModelDeployment
    ) -> contextlib.AbstractAsyncContextManager[Verdict]:
        if self.gate is None:
            return contextlib.nullcontext(Verdict(None, None))
        return self.gate.evaluate(body, md)

    @staticmethod
    def _autoscaling_fields(
        previous: ModelDeploymentStatus, tick: Tick, now: datetime
    ) -> dict[str, Any]:
        update: dict[str, Any] = {}
        if tick.flush:
            per_replica = tick.decision.per_replica
            update["queue_depth"] = round(per_replica, 2) if per_replica is not None else None
            update["autoscaler"] = history_status(tick.decision.history)
        else:
            update["queue_depth"] = previous.queue_depth
            update["autoscaler"] = previous.autoscaler
        if tick.decision.changed:
            update["last_scale"] = tick.decision.as_status(rfc3339(now))
        return update

    async def _apply_children(
        self,
        body: dict[str, Any],
        children: list[dict[str, Any]],
        problem: Problem | None,
        now: datetime,
    ) -> dict[str, Any] | None:
        """Apply what differs; returns the live Deployment. A known problem blocks rollouts
        (the previous revision keeps serving) but the live state is still reported."""
        namespace = body["metadata"]["namespace"]
        lives = await asyncio.gather(*(self._live(child, namespace) for child in children))
        stale = [
            (child, live)
            for child, live in zip(children, lives, strict=True)
            if problem is None and needs_apply(child, live)
        ]
        applied = await asyncio.gather(*(self.kube.apply(child) for child, _ in stale))
        live_by_kind = {c["kind"]: live for c, live in zip(children, lives, strict=True)}
        for (child, _), after in zip(stale, applied, strict=True):
            live_by_kind[child["kind"]] = after
            self.metrics.children_applied.labels(child["kind"]).inc()
            if self.cache is not None and child["kind"] == "Deployment":
                # Written through so that the next capacity evaluation of the same
                # tier counts the replicas just granted.
                self.cache.deployment_seen("MODIFIED", after)
        if stale:
            # One Event per reconcile, not one per child: a first reconcile of a
            # thousand objects should not post three thousand Events.
            created = [c["kind"] for c, before in stale if before is None]
            updated = [c["kind"] for c, before in stale if before is not None]
            parts = ([f"created {', '.join(created)}"] if created else []) + (
                [f"updated {', '.join(updated)}"] if updated else []
            )
            reason = "Created" if created and not updated else "Updated"
            await post_event(self.kube, body, "Normal", reason, "; ".join(parts).capitalize(), now)
        return live_by_kind.get("Deployment")

    async def _live(self, child: dict[str, Any], namespace: str) -> dict[str, Any] | None:
        """The child as last seen by the watch (see Cache), else as the API server has it."""
        name = child["metadata"]["name"]
        if self.cache is not None:
            return self.cache.child(child["kind"], namespace, name)
        return await self.kube.get(resource_for(child), namespace, name)

    async def _missing_secrets(self, namespace: str, names: list[str]) -> Problem | None:
        missing = [n for n in names if await self.kube.get(SECRET, namespace, n) is None]
        return missing_secrets_problem(missing)

    async def _write_status(
        self,
        body: dict[str, Any],
        previous: ModelDeploymentStatus,
        status: ModelDeploymentStatus,
        now: datetime,
    ) -> None:
        if status == previous:
            return
        metadata = body["metadata"]
        patch = status.to_k8s()
        # A merge patch leaves out fields that became None; null them explicitly.
        for field_name, value in previous.to_k8s().items():
            if field_name not in patch and value is not None:
                patch[field_name] = None
        written = await self.kube.patch_status(
            MODEL_DEPLOYMENT, metadata["namespace"], metadata["name"], patch
        )
        if self.cache is not None:
            self.cache.status_written((metadata["namespace"], metadata["name"]), written)
        for type_, event_type in (("Ready", "Normal"), ("Degraded", "Warning")):
            before, after = condition(previous, type_), condition(status, type_)
            if after == "True" and before != "True":
                c = next(c for c in status.conditions if c.type == type_)
                await post_event(self.kube, body, event_type, c.reason, c.message or type_, now)
