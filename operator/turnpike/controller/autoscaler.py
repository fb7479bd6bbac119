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
from datetime import datetime
from typing import Any

import aiohttp

from turnpike.api.constants import LWS_WORKER_INDEX_LABEL as WORKER_INDEX_LABEL
from turnpike.api.modeldeployment import SLO, ModelDeployment, SLOLatency
from turnpike.api.modeldeployment import MetricsSource as SourceKind
from turnpike.api.status import AutoscalerHistory, ModelDeploymentStatus
from turnpike.autoscale.history import History
from turnpike.autoscale.policy import BudgetCap, Decision, Params, SLOSignal, decide
from turnpike.autoscale.signal import Observation
from turnpike.autoscale.sources import (
    MetricsSource,
    PodScrapeSource,
    PodTarget,
    PrometheusSource,
    new_session,
)
from turnpike.controller.cache import Cache
from turnpike.controller.gateways import SLO_METHOD as GATEWAY_METHOD
from turnpike.controller.gateways import GatewayLoads
from turnpike.controller.metrics import Metrics
from turnpike.kube import KubeAPI
from turnpike.kube.resources import POD
from turnpike.render import selector
from turnpike.slo import Report, Window, interval_of, window_key
from turnpike.slo.estimate import METHOD as TRITON_METHOD
from turnpike.slo.estimate import QUEUE_WAIT
from turnpike.slo.report import BUDGET_LIMITED_FOR_S, burn_rate, slo_status
from turnpike.slo.window import FAST_BURN_MINUTES, Counts

Key = tuple[str, str]
STATUS_FLUSH_SECONDS = 15.0
# The SLO's counts are written at most every STATUS_FLUSH_SECONDS, and for big
# fleets less often, so that they alone never write more than this many
# statuses a second (5,000 measured deployments: every 250 s).
MAX_SLO_WRITES_PER_S = 20


def slo_flush_seconds(deployments: int) -> float:
    return max(STATUS_FLUSH_SECONDS, deployments / MAX_SLO_WRITES_PER_S)


def pod_is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def started_after(pod: dict[str, Any], since: float) -> bool:
    """Whether every container of the pod (re)started after ``since`` (epoch seconds)."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    if not statuses:
        return False
    for status in statuses:
        started = (status.get("state", {}).get("running") or {}).get("startedAt")
        if not isinstance(started, str):
            return False
        try:
            when = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return False
        if when < since:
            return False
    return True


def serving(pod: dict[str, Any]) -> bool:
    """A Deployment's pod, or a LeaderWorkerSet group's leader (worker index 0)."""
    labels = pod["metadata"].get("labels") or {}
    return str(labels.get(WORKER_INDEX_LABEL, "0")) == "0"


def split_pods(
    pods: list[dict[str, Any]], *, measuring_since: float | None = None
) -> tuple[list[PodTarget], int]:
    """Ready pods with an IP (scrape targets) and the number still starting.

    With ``measuring_since`` (epoch seconds), a pod whose containers all started
    after it is ``fresh``: its Triton began counting while the caller already
    measured, so none of its requests were counted yet.
    """
    ready: list[PodTarget] = []
    starting = 0
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp") or not serving(pod):
            continue  # a multi-node group is measured at its leader (rank 0) only
        ip = pod.get("status", {}).get("podIP")
        if pod_is_ready(pod) and ip:
            fresh = measuring_since is not None and started_after(pod, measuring_since)
            ready.append(PodTarget(pod["metadata"]["name"], ip, fresh))
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
    # The SLO's window (None without spec.slo) and the last round's report.
    slo: Window | None = None
    slo_report: Report | None = None
    slo_flushed_at: float = 0.0
    # When the tier's budget last capped a decision (see Report.capped_recently).
    capped_at: float | None = None
    read_at: float | None = None
    # When this operator began measuring the deployment (epoch seconds): pods
    # started later have every request still in their counters.
    created_at: float = 0.0


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
    # The SLO's window after this round (None without spec.slo).
    slo: Report | None = None


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
    # What the gateways hold per deployment (scale from zero); None: no gateway.
    gateways: GatewayLoads | None = None
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
        state = (
            _State(source, kind, history, created_at=self.clock())
            if state is None
            # A new source knows no pod: every pod that runs now is its baseline.
            else replace(
                state,
                source=source,
                source_kind=kind,
                last=None,
                last_at=0.0,
                created_at=self.clock(),
            )
        )
        if state.slo is None and md.spec.slo is not None and stored.slo is not None:
            buckets = stored.slo.buckets
            state.slo = Window.restore(
                buckets.to_k8s() if buckets is not None else None,
                window_key(md.spec.slo),
                md.spec.slo.window_minutes,
                self.clock(),
            )
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

    async def read(
        self,
        key: Key,
        md: ModelDeployment,
        stored: ModelDeploymentStatus,
        *,
        autoscaled: bool = True,
    ) -> Reading:
        """List the pods and sample their metrics (the tick's I/O). With ``autoscaled``
        false the round only feeds the SLO's window (spec.slo without autoscaling)."""
        state = self._source(key, md, stored)
        interval = float(md.spec.autoscaling.scrape_interval_seconds)
        now = self.clock()
        if autoscaled and state.last is not None and now - state.last_at < 0.9 * interval:
            # Reconciles triggered by other events (a child changed, status written)
            # must not add samples: the policy's windows count samples, and a burst
            # of extra zero readings would dilute the panic window.
            held = replace(state.last.decision, current=state.last.decision.replicas)
            tick = Tick(held, state.last.ready, state.last.starting, flush=False)
            return Reading(time=state.last_at, held=tick, slo=self._held_slo(state))
        if not autoscaled and state.read_at is not None and now - state.read_at < 0.9 * interval:
            return Reading(time=state.read_at, slo=self._held_slo(state))
        if self.cache is not None and self.cache.pods_synced:
            pods = self.cache.pods_of(*key)
        else:
            pods = await self.kube.list(POD, key[0], label_selector=selector(md))
        targets, starting = split_pods(pods, measuring_since=state.created_at)
        observation = await state.source.sample(targets) if targets else None
        now = self.clock()
        state.read_at = now
        return Reading(
            now,
            pods,
            len(targets),
            starting,
            observation,
            slo=self._measure(state, md, now, observation),
        )

    def _held_slo(self, state: _State) -> Report | None:
        report = state.slo_report
        return replace(report, flush=False) if report is not None else None

    def _measure(
        self, state: _State, md: ModelDeployment, now: float, observation: Observation | None
    ) -> Report | None:
        """Add this round's requests to the SLO's window (pure work, no I/O)."""
        slo = md.spec.slo
        if slo is None:
            if state.slo_report is not None:
                self._forget_slo((md.metadata.namespace or "", md.metadata.name))
            state.slo = state.slo_report = None
            return None
        key = window_key(slo)
        window = state.slo
        if window is None or window.key != key:
            window = Window.empty(key, slo.window_minutes)
        unavailable: str | None = None
        interval = None
        counted = self._gateway_counts(md, slo)
        if counted is not None:
            window = window.add(now, counted)
        if observation is None:  # no ready pod: nothing serves, which status must say
            unavailable = "no pod is ready to serve"
            window = window.trimmed(now)
        else:
            if md.spec.autoscaling.source is SourceKind.PROMETHEUS:
                unavailable = (
                    "the SLO is measured from the pods' own Triton metrics; "
                    "autoscaling.source prometheus does not give per-pod intervals"
                )
            elif not observation.usable:
                unavailable = f"no pod answered ({observation.failure_summary()})"
            interval = interval_of(
                observation.deltas, slo.latency.value, slo.threshold_milliseconds
            )
            if counted is None:
                window = window.add(now, interval.counts)
            else:
                unavailable = None  # the gateways counted the requests themselves
        flush = now - state.slo_flushed_at >= slo_flush_seconds(len(self._states))
        if flush:
            state.slo_flushed_at = now
        state.slo = window
        capped = state.capped_at is not None and now - state.capped_at < BUDGET_LIMITED_FOR_S
        method = GATEWAY_METHOD if counted is not None else TRITON_METHOD
        state.slo_report = Report(window, now, interval, unavailable, flush, capped, method)
        self._export_slo(md, state.slo_report)
        return state.slo_report

    def _gateway_counts(self, md: ModelDeployment, slo: SLO) -> Counts | None:
        """What the gateways counted for this deployment since the last round; None
        when none measures it (its objective is not on request latency, or no
        request reached it through a gateway yet)."""
        if self.gateways is None or slo.latency is not SLOLatency.REQUEST_LATENCY:
            return None
        key = (md.metadata.namespace or "", md.metadata.name)
        return self.gateways.take_slo(key, slo.threshold_milliseconds)

    def _export_slo(self, md: ModelDeployment, report: Report) -> None:
        slo = md.spec.slo
        assert slo is not None
        labels = (md.metadata.namespace or "", md.metadata.name)
        status = slo_status(slo, report)
        self.metrics.slo_objective.labels(*labels).set(slo.objective_percent)
        for gauge, value in (
            (self.metrics.slo_attainment.labels(*labels), status.attainment_percent),
            (
                self.metrics.slo_budget_remaining.labels(*labels),
                status.error_budget_remaining_percent,
            ),
            (self.metrics.slo_burn_rate.labels(*labels, "5m"), status.burn_rate),
            (self.metrics.slo_burn_rate.labels(*labels, "1h"), status.burn_rate_hour),
        ):
            if value is not None:
                gauge.set(value)

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
            slo=slo_signal(md, reading.slo),
            gateway=self.gateways.load(key) if self.gateways is not None else None,
        )
        state.history = decision.history
        if decision.limited_by_budget:
            state.capped_at = now
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
        self._forget_slo(key)

    def _forget_slo(self, key: Key) -> None:
        for gauge in (
            self.metrics.slo_attainment,
            self.metrics.slo_objective,
            self.metrics.slo_budget_remaining,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(*key)
        for window in ("5m", "1h"):
            with contextlib.suppress(KeyError):
                self.metrics.slo_burn_rate.remove(*key, window)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def history_status(history: History) -> AutoscalerHistory:
    return AutoscalerHistory.model_validate(history.to_dict())


def slo_signal(md: ModelDeployment, report: Report | None) -> SLOSignal | None:
    """What the policy needs of the SLO this tick (None: no SLO or nothing measured)."""
    slo = md.spec.slo
    if slo is None or report is None:
        return None
    interval = report.interval
    burn = burn_rate(report.window.recent(report.now, FAST_BURN_MINUTES), slo.objective_percent)
    return SLOSignal(
        name=f"{slo.latency.value} ≤ {slo.threshold_milliseconds:g}ms",
        threshold_ms=slo.threshold_milliseconds,
        latency_ms=interval.latency_ms if interval is not None else None,
        queue_wait_ms=interval.queue_wait_ms if interval is not None else None,
        burn_rate=burn,
        on_queue_wait=slo.latency.value == QUEUE_WAIT,
    )
