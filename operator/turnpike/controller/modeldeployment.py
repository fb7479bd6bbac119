"""Reconcile one ModelDeployment: observe, ask the core, apply, report.

Level-triggered: the same function runs for create, update, resume after a
restart, child drift, the periodic resync and every autoscaling tick, and it
writes only what differs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from turnpike.api.modeldeployment import ModelDeployment
from turnpike.api.status import ConditionStatus, ModelDeploymentStatus
from turnpike.controller.autoscaler import Autoscaler, Tick, history_status
from turnpike.controller.events import post_event
from turnpike.controller.metrics import Metrics
from turnpike.kube import ApiError, Kube
from turnpike.kube.resources import MODEL_DEPLOYMENT, SECRET, resource_for
from turnpike.reconcile.children import desired_children, desired_replicas
from turnpike.reconcile.diff import needs_apply
from turnpike.reconcile.validation import (
    missing_secrets_problem,
    parse_model_deployment,
    referenced_secrets,
)
from turnpike.render import endpoint, selector_labels
from turnpike.status import Problem, condition, next_status, parse_status
from turnpike.status.conditions import deployment_status, merge_conditions, rollout_of

log = logging.getLogger(__name__)
Key = tuple[str, str]
Wanted = list[tuple[str, ConditionStatus, str, str]]


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def metrics_condition(tick: Tick) -> tuple[str, ConditionStatus, str, str]:
    if tick.decision.metrics_stale:
        return ("MetricsAvailable", "False", "MetricsUnavailable", tick.decision.reason)
    if tick.decision.metrics_partial:
        return ("MetricsAvailable", "True", "PartialMetrics", tick.decision.reason)
    return ("MetricsAvailable", "True", "MetricsRead", "")


@dataclass
class ModelDeploymentReconciler:
    kube: Kube
    metrics: Metrics
    resync_seconds: float = 60.0
    autoscaler: Autoscaler | None = None
    clock: Callable[[], datetime] = utcnow

    async def __call__(self, key: Key) -> float | None:
        started = time.monotonic()
        result = "error"
        try:
            again = await self.reconcile(key)
            result = "ok"
            return again
        finally:
            self.metrics.reconciles.labels("ModelDeployment", result).inc()
            self.metrics.reconcile_seconds.labels("ModelDeployment").observe(
                time.monotonic() - started
            )

    async def reconcile(self, key: Key) -> float | None:
        try:
            return await self._reconcile(key)
        except ApiError as error:
            if error.namespace_terminating:
                return None  # the namespace and this object are on their way out
            raise

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
        tick: Tick | None = None
        if md.spec.autoscaling.enabled and problem is None and self.autoscaler is not None:
            current = desired_replicas(md, previous.desired_replicas)
            tick = await self.autoscaler.tick(key, md, previous, current)
            replicas = tick.decision.replicas
        else:
            if self.autoscaler is not None:
                self.autoscaler.forget(key)
            replicas = desired_replicas(md, previous.desired_replicas)

        deployment = await self._apply_children(body, md, replicas, problem, now)
        selector = ",".join(f"{k}={v}" for k, v in sorted(selector_labels(md).items()))
        status = next_status(
            previous,
            generation,
            replicas,
            deployment,
            problem,
            rfc3339(now),
            endpoint=endpoint(md),
            selector=selector,
            gpus_per_replica=md.spec.gpu.per_replica,
        )
        if tick is not None:
            status = self._with_autoscaling(
                status, previous, generation, deployment, problem, tick, now
            )
        else:
            status = status.model_copy(update={"queue_depth": None, "autoscaler": None})
        await self._write_status(body, previous, status, now)
        if tick is not None and tick.decision.changed:
            reason = "ScaledUp" if tick.decision.direction == "up" else "ScaledDown"
            await post_event(self.kube, body, "Normal", reason, tick.decision.reason, now)
        if tick is not None:
            return float(md.spec.autoscaling.scrape_interval_seconds)
        return self.resync_seconds

    async def _apply_children(
        self,
        body: dict[str, Any],
        md: ModelDeployment,
        replicas: int,
        problem: Problem | None,
        now: datetime,
    ) -> dict[str, Any] | None:
        """Apply what differs; returns the live Deployment. A known problem blocks rollouts
        (the previous revision keeps serving) but the live state is still reported."""
        namespace = body["metadata"]["namespace"]
        deployment: dict[str, Any] | None = None
        for child in desired_children(md, replicas, body["metadata"]["uid"]):
            live = await self.kube.get(resource_for(child), namespace, child["metadata"]["name"])
            if problem is None and needs_apply(child, live):
                action = "Created" if live is None else "Updated"
                live = await self.kube.apply(child)
                self.metrics.children_applied.labels(child["kind"]).inc()
                await post_event(
                    self.kube,
                    body,
                    "Normal",
                    action,
                    f"{action} {child['kind']} {child['metadata']['name']}",
                    now,
                )
            if child["kind"] == "Deployment":
                deployment = live
        return deployment

    def _with_autoscaling(
        self,
        status: ModelDeploymentStatus,
        previous: ModelDeploymentStatus,
        generation: int,
        deployment: dict[str, Any] | None,
        problem: Problem | None,
        tick: Tick,
        now: datetime,
    ) -> ModelDeploymentStatus:
        wanted: Wanted = deployment_status(
            generation, rollout_of(deployment, tick.decision.replicas), problem
        )
        wanted.append(metrics_condition(tick))
        update: dict[str, Any] = {
            "conditions": merge_conditions(previous.conditions, wanted, generation, rfc3339(now)),
        }
        if tick.flush:
            per_replica = tick.decision.per_replica
            update["queue_depth"] = round(per_replica, 2) if per_replica is not None else None
            update["autoscaler"] = history_status(tick.decision.history)
        else:
            update["queue_depth"] = previous.queue_depth
            update["autoscaler"] = previous.autoscaler
        if tick.decision.changed:
            update["last_scale"] = tick.decision.as_status(rfc3339(now))
        return status.model_copy(update=update)

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
        await self.kube.patch_status(
            MODEL_DEPLOYMENT, metadata["namespace"], metadata["name"], patch
        )
        for type_, event_type in (("Ready", "Normal"), ("Degraded", "Warning")):
            before, after = condition(previous, type_), condition(status, type_)
            if after == "True" and before != "True":
                c = next(c for c in status.conditions if c.type == type_)
                await post_event(self.kube, body, event_type, c.reason, c.message or type_, now)
