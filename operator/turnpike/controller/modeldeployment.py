"""Reconcile one ModelDeployment: observe, ask the core, apply, report.

Level-triggered: the same function runs for create, update, resume after a
restart, child drift and the periodic resync, and it writes only what differs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from turnpike.controller.events import post_event
from turnpike.controller.metrics import Metrics
from turnpike.kube import Kube
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

log = logging.getLogger(__name__)
Key = tuple[str, str]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ModelDeploymentReconciler:
    kube: Kube
    metrics: Metrics
    resync_seconds: float = 60.0
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
        namespace, name = key
        body = await self.kube.get(MODEL_DEPLOYMENT, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None  # children go with it through ownerReferences
        generation = int(body["metadata"].get("generation", 0))
        previous = parse_status(body.get("status"))
        now = self.clock()

        parsed = parse_model_deployment(body)
        if isinstance(parsed, Problem):
            await self._report(
                body,
                previous,
                generation,
                previous.desired_replicas or 0,
                None,
                parsed,
                now,
                gpus=None,
                selector=None,
                url=None,
            )
            return self.resync_seconds
        md = parsed

        problem = await self._missing_secrets(namespace, referenced_secrets(md))
        replicas = desired_replicas(md, previous.desired_replicas)
        children = desired_children(md, replicas, body["metadata"]["uid"])
        deployment: dict[str, Any] | None = None
        for child in children:
            resource = resource_for(child)
            live = await self.kube.get(resource, namespace, child["metadata"]["name"])
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
        selector = ",".join(f"{k}={v}" for k, v in sorted(selector_labels(md).items()))
        await self._report(
            body,
            previous,
            generation,
            replicas,
            deployment,
            problem,
            now,
            gpus=md.spec.gpu.per_replica,
            selector=selector,
            url=endpoint(md),
        )
        return self.resync_seconds

    async def _missing_secrets(self, namespace: str, names: list[str]) -> Problem | None:
        missing = [n for n in names if await self.kube.get(SECRET, namespace, n) is None]
        return missing_secrets_problem(missing)

    async def _report(
        self,
        body: dict[str, Any],
        previous: Any,
        generation: int,
        desired: int,
        deployment: dict[str, Any] | None,
        problem: Problem | None,
        now: datetime,
        *,
        gpus: int | None,
        selector: str | None,
        url: str | None,
    ) -> None:
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        status = next_status(
            previous,
            generation,
            desired,
            deployment,
            problem,
            stamp,
            endpoint=url,
            selector=selector,
            gpus_per_replica=gpus,
        )
        if status == previous:
            return
        metadata = body["metadata"]
        await self.kube.patch_status(
            MODEL_DEPLOYMENT, metadata["namespace"], metadata["name"], status.to_k8s()
        )
        for type_, event_type in (("Ready", "Normal"), ("Degraded", "Warning")):
            before, after = condition(previous, type_), condition(status, type_)
            if after == "True" and before != "True":
                c = next(c for c in status.conditions if c.type == type_)
                await post_event(self.kube, body, event_type, c.reason, c.message or type_, now)
