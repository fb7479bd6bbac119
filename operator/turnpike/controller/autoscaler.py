"""One autoscaling tick for a ModelDeployment: read Triton, ask the policy.

The policy (turnpike.autoscale.policy) is pure; this module only finds the
pods, samples their metrics through a MetricsSource and keeps per-object
sources and histories between ticks. A tick has two halves: :meth:`Autoscaler.read`
does the I/O, and :meth:`Autoscaler.decide` asks the policy, with the capacity
tier's cap, while the reconciler holds the tier's lock (so the decision, the
status and the history record what the tier really grants). The history is also stored in status
(at most every STATUS_FLUSH_SECONDS, or whenever replicas change), so a
restart or a new leader picks up the window where it was.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from turnpike.api.modeldeployment import MetricsSource as SourceKind
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.api.status import AutoscalerHistory, ModelDeploymentStatus
from turnpike.autoscale.history import History
from turnpike.autoscale.policy import BudgetCap, Decision, Params, decide
from turnpike.autoscale.signal import Observation
from turnpike.autoscale.sources import (
    MetricsSource,
    PodScrapeSource,
    PodTarget,
    PrometheusSource,
    new_session,
)
from turnpike.controller.cache import Cache
from turnpike.controller.metrics import Metrics
from turnpike.kube import KubeAPI
from turnpike.kube.resources import POD
from turnpike.render import selector

Key = tuple[str, str]
STATUS_FLUSH_SECONDS = 15.0


def pod_is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def split_pods(pods: list[dict[str, Any]]) -> tuple[list[PodTarget], int]:
    """Ready pods with an IP (scrape targets) and the number still starting."""
    ready: list[PodTarget] = []
    starting = 0
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        ip = pod.get("status", {}).get("podIP")
        if pod_is_ready(pod) and ip:
            ready.append(PodTarget(pod["metadata"]["name"], ip))
        elif pod.get("status", {}).get("phase") in (None, "Pending", "Running"):
            starting += 1
    return sorted(ready, key=lambda t: t.name), starting


@dataclass
class _State:
    source: MetricsSource
    source_kind: tuple[str, str | None, str | None]
    history: History
    flushed_at: float = 0.0
    last: Tick | None = None
    last_at: float = 0.0


@dataclass
class Reading:
    """What one tick read, before any decision: the pods and their metrics, or the
    decision of a tick less than a scrape interval ago (``held``), to repeat."""

    time: float
    pods: list[dict[str, Any]] | None = None
    ready: int = 0
    starting: int = 0
    observation: Observation | None = None
    held: Tick | None = None


@dataclass
class Tick:
    decision: Decision
    ready: int
    starting: int
    flush: bool
    # The pods this tick listed (None when it held the last decision): the
    # reconciler explains unschedulable ones without listing them again.
    pods: list[dict[str, Any]] | None = None


@dataclass
class Autoscaler:
    kube: KubeAPI
    metrics: Metrics
    clock: Callable[[], float] = time.time
    metrics_port: int = 8002
    # Pods from the watch (see controller/podwatch.py) instead of a LIST per tick.
    cache: Cache | None = None
    _session: aiohttp.ClientSession | None = None
    _states: dict[Key, _State] = field(default_factory=dict)

    def _source(self, key: Key, md: ModelDeployment, stored: ModelDeploymentStatus) -> _State:
        spec = md.spec.autoscaling
        kind = (spec.source.value, spec.prometheus_url, md.spec.model.name)
        state = self._states.get(key)
        if state is not None and state.source_kind == kind:
            return state
        if self._session is None:
            self._session = new_session()
        source: MetricsSource
        if spec.source is SourceKind.PROMETHEUS and spec.prometheus_url:
            source = PrometheusSource(
                spec.prometheus_url,
                namespace=key[0],
                model=md.spec.model.name,
                session=self._session,
            )
        else:
            source = PodScrapeSource(
                model=md.spec.model.name,
                port=self.metrics_port,
                session=self._session,
                clock=self.clock,
            )
        raw = stored.autoscaler.to_k8s() if stored.autoscaler is not None else None
        history = state.history if state is not None else History.restore(raw, spec.metric.value)
        state = _State(source, kind, history)
        self._states[key] = state
        return state

    async def tick(
        self,
        key: Key,
        md: ModelDeployment,
        stored: ModelDeploymentStatus,
        current: int,
        budget: int | BudgetCap | None = None,
    ) -> Tick:
        """:meth:`read` then :meth:`decide`, for callers without a capacity tier."""
        reading = await self.read(key, md, stored)
        return self.decide(key, md, reading, current, budget)

    async def read(self, key: Key, md: ModelDeployment, stored: ModelDeploymentStatus) -> Reading:
        """List the pods and sample their metrics (the tick's I/O)."""
        state = self._source(key, md, stored)
        interval = float(md.spec.autoscaling.scrape_interval_seconds)
        if state.last is not None and self.clock() - state.last_at < 0.9 * interval:
            # Reconciles triggered by other events (a child changed, status written)
            # must not add samples: the policy's windows count samples, and a burst
            # of extra zero readings would dilute the panic window.
            held = replace(state.last.decision, current=state.last.decision.replicas)
            tick = Tick(held, state.last.ready, state.last.starting, flush=False)
            return Reading(time=state.last_at, held=tick)
        if self.cache is not None and self.cache.pods_synced:
            pods = self.cache.pods_of(*key)
        else:
            pods = await self.kube.list(POD, key[0], label_selector=selector(md))
        targets, starting = split_pods(pods)
        observation = await state.source.sample(targets) if targets else None
        return Reading(self.clock(), pods, len(targets), starting, observation)

    def decide(
        self,
        key: Key,
        md: ModelDeployment,
        reading: Reading,
        current: int,
        budget: int | BudgetCap | None = None,
    ) -> Tick:
        """The policy's decision on ``reading``; ``budget`` is the capacity tier's cap
        (see :func:`turnpike.autoscale.policy.decide`). No I/O."""
        if reading.held is not None:
            return reading.held
        state = self._states[key]
        params = Params.from_spec(
            md.spec.autoscaling,
            min_replicas=md.spec.min_replicas,
            max_replicas=md.spec.max_replicas,
        )
        now = reading.time
        decision = decide(
            params,
            current=current,
            ready=reading.ready,
            starting=reading.starting,
            history=state.history,
            now=now,
            observation=reading.observation,
            budget=budget,
        )
        state.history = decision.history
        flush = decision.changed or now - state.flushed_at >= STATUS_FLUSH_SECONDS
        if flush:
            state.flushed_at = now
        labels = (key[0], key[1])
        if decision.per_replica is not None:
            self.metrics.queue_depth.labels(*labels).set(decision.per_replica)
        self.metrics.desired_replicas.labels(*labels).set(decision.replicas)
        self.metrics.ready_replicas.labels(*labels).set(reading.ready)
        self.metrics.scaling_decisions.labels(decision.direction).inc()
        state.last = Tick(decision, reading.ready, reading.starting, flush)
        state.last_at = now
        return replace(state.last, pods=reading.pods)

    def forget(self, key: Key) -> None:
        self._states.pop(key, None)
        for gauge in (
            self.metrics.queue_depth,
            self.metrics.desired_replicas,
            self.metrics.ready_replicas,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*key)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def history_status(history: History) -> AutoscalerHistory:
    return AutoscalerHistory.model_validate(history.to_dict())
