"""The autoscalers under test, all driven by :func:`bench.autoscale_sim.model.simulate`.

* :class:`TurnpikePolicy` calls the operator's own
  :func:`turnpike.autoscale.policy.decide` the way the controller does: every
  ``scrape_interval_s`` it scrapes the ready pods' Triton queue depth
  directly (an :class:`~turnpike.autoscale.signal.Observation` stamped now)
  and passes the spec'd, ready and starting replica counts and the history
  the previous decision returned.
* :class:`HPAPolicy` is the Kubernetes HPA (``autoscaling/v2``) on a Pods
  metric (Triton queue depth per pod through Prometheus and the Prometheus
  Adapter): ``calcPlainMetricReplicas`` with its missing/unready pod rules,
  then ``stabilizeRecommendationWithBehaviors`` and
  ``convertDesiredReplicasWithBehaviorRate`` with the documented default
  behavior.
* :class:`KEDAPolicy` is KEDA's Prometheus scaler: an External metric with an
  AverageValue target, fed through the same HPA controller code.
* :class:`KPAPolicy` is Knative's KPA decider (``autoscaler.Scale``) on
  time-averaged concurrency with stable and panic windows.

Each re-implementation cites the upstream function it follows; see
docs/autoscale-sim.md for the parameters and what is simplified.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bench.autoscale_sim.model import ClusterView
from turnpike.api.modeldeployment import Autoscaling
from turnpike.autoscale.history import History
from turnpike.autoscale.policy import Decision, Params, decide
from turnpike.autoscale.signal import Observation

# Wall clock of simulated time 0 (2026-01-01T00:00:00Z): Turnpike's history
# keeps epoch milliseconds.
EPOCH = 1_767_225_600.0
_EPS = 1e-6


def _due(at: float, now: float) -> bool:
    return at <= now + _EPS


# --------------------------------------------------------------------------- #
# Reference policies for tests and experiments.


class StaticPolicy:
    """A fixed replica count (no autoscaling)."""

    def __init__(self, replicas: int, *, name: str | None = None) -> None:
        self.replicas = replicas
        self.name = name or f"static-{replicas}"
        self.next_tick = 0.0

    def tick(self, view: ClusterView) -> int | None:
        del view
        self.next_tick = math.inf
        return self.replicas


class ScriptedPolicy:
    """Sets the replica count at given times: ``[(t, replicas), ...]``."""

    def __init__(self, script: Sequence[tuple[float, int]], *, name: str = "scripted") -> None:
        self.script = sorted(script)
        self.name = name
        self._i = 0
        self.next_tick = self.script[0][0] if self.script else math.inf

    def tick(self, view: ClusterView) -> int | None:
        replicas: int | None = None
        while self._i < len(self.script) and _due(self.script[self._i][0], view.now):
            replicas = self.script[self._i][1]
            self._i += 1
        self.next_tick = self.script[self._i][0] if self._i < len(self.script) else math.inf
        return replicas


# --------------------------------------------------------------------------- #
# Turnpike: the real policy.


def turnpike_params(max_replicas: int, min_replicas: int = 1) -> Params:
    """The defaults a ModelDeployment gets: ``Autoscaling()`` with its bounds."""
    return Params.from_spec(Autoscaling(), min_replicas=min_replicas, max_replicas=max_replicas)


class TurnpikePolicy:
    """``turnpike.autoscale.policy.decide`` with the pod-scrape metrics source.

    Mirrors ``turnpike.controller.autoscaler.Autoscaler.tick``: every scrape
    interval (the reconciler requeues after ``scrapeIntervalSeconds``), read
    every ready pod's Triton ``/metrics`` (here: the queue, which the
    shared-queue model spreads evenly over ready pods; no observation at all
    when no pod is ready), then decide with ``current`` = the replicas last
    set, ``ready`` = ready pods, ``starting`` = pods still loading, no budget
    (no CapacityTier), and keep the returned history for the next tick.
    """

    def __init__(self, params: Params, *, slots: int | None = None, name: str = "turnpike") -> None:
        self.params = params
        self.slots = slots
        self.name = name
        self.history = History.empty(params.metric)
        self.next_tick = 0.0
        self.last: Decision | None = None

    def in_flight(self, view: ClusterView) -> float | None:
        """Requests executing on the ready pods, as their Triton would report.

        The model counts requests in service fleet-wide, draining pods
        included; scraping only reaches ready pods. With ``slots`` known, a
        queue means every ready slot is busy (the shared queue never waits
        beside a free slot), and otherwise the ready pods hold at most the
        fleet-wide count. This is the instantaneous gauge TensorRT-LLM exports
        (``request_type="active"``); Triton's compute-time counter would give
        its mean over the scrape interval instead. None (no in-flight metric)
        without ``slots``.
        """
        if self.slots is None:
            return None
        if view.busy:
            # Per-pod executing counts, as each ready pod's Triton reports them.
            return float(sum(view.busy))
        full = len(view.ready) * self.slots
        return float(full if view.queue > 0 else min(view.in_service, full))

    def tick(self, view: ClusterView) -> int | None:
        now = EPOCH + view.now
        pods = tuple(f"pod-{pid}" for pid in view.ready)
        if view.queues:
            pairs = zip(view.ready, view.queues, strict=True)
            queues = {f"pod-{pid}": float(q) for pid, q in pairs}
        else:
            queues = dict.fromkeys(pods, view.queue / len(pods)) if pods else {}
        observation = (
            Observation(
                time=now,
                queue=float(view.queue),
                pods=pods,
                queues=queues,
                in_flight=self.in_flight(view),
            )
            if pods
            else None
        )
        decision = decide(
            self.params,
            current=view.spec_replicas,
            ready=len(view.ready),
            starting=len(view.loading),
            history=self.history,
            now=now,
            observation=observation,
        )
        self.history = decision.history
        self.last = decision
        self.next_tick += self.params.scrape_interval_s
        return decision.replicas


# --------------------------------------------------------------------------- #
# Prometheus in front of the HPA and KEDA.


MetricName = Literal["queue", "concurrency"]


class Prometheus:
    """Scrapes each ready pod's Triton metric every ``interval_s``.

    ``metric="queue"`` is ``nv_inference_pending_request_count`` alone (the
    misconfigured baselines); ``"concurrency"`` is pending + executing, the
    work in flight at the pod, which is what a competent HPA/KEDA setup reads
    for a server with hard slot limits. With the shared queue the pending
    count is spread evenly over the ready pods (the queue belongs to none).

    A pod that is still loading has no metrics endpoint yet (Triton starts its
    metrics server after loading models), so it has no series; a pod that is
    gone has a stale series and drops out of queries. A query therefore sees
    the value each *current* pod had at the last scrape, 0 to ``interval_s``
    old.
    """

    def __init__(
        self, interval_s: float = 15.0, offset_s: float = 0.0, metric: MetricName = "queue"
    ) -> None:
        self.interval_s = interval_s
        self.next_scrape = offset_s
        self.metric = metric
        self.values: dict[int, float] = {}
        self.scraped_at: float | None = None

    def advance(self, view: ClusterView) -> None:
        if not _due(self.next_scrape, view.now):
            return
        if view.queues:
            pending = [float(q) for q in view.queues]
        else:
            even = view.queue / len(view.ready) if view.ready else 0.0
            pending = [even] * len(view.ready)
        if self.metric == "concurrency":
            executing = view.busy or (0,) * len(view.ready)
            pending = [q + b for q, b in zip(pending, executing, strict=True)]
        self.values = dict(zip(view.ready, pending, strict=True))
        self.scraped_at = view.now
        while _due(self.next_scrape, view.now):
            self.next_scrape += self.interval_s

    def per_pod(self, pods: Sequence[int]) -> dict[int, float]:
        """``sum by (pod) (nv_inference_pending_request_count)`` for live pods."""
        return {pid: self.values[pid] for pid in pods if pid in self.values}

    def total(self, pods: Sequence[int]) -> float:
        """``sum(nv_inference_pending_request_count)`` over live pods."""
        return math.fsum(self.per_pod(pods).values())


def _milli(value: float) -> int:
    """A resource.Quantity's MilliValue (the adapter exposes milli precision)."""
    return math.ceil(value * 1000 - 1e-9)


# --------------------------------------------------------------------------- #
# The HPA controller (pkg/controller/podautoscaler).

PolicyType = Literal["Pods", "Percent"]


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    type: PolicyType
    value: int
    period_s: float


@dataclass(frozen=True, slots=True)
class HPABehavior:
    """``autoscaling/v2`` behavior; the defaults are the documented ones."""

    up_window_s: float = 0.0
    down_window_s: float = 300.0
    up_policies: tuple[ScalingPolicy, ...] = (
        ScalingPolicy("Percent", 100, 15.0),
        ScalingPolicy("Pods", 4, 15.0),
    )
    down_policies: tuple[ScalingPolicy, ...] = (ScalingPolicy("Percent", 100, 15.0),)


class HPAController:
    """One HPA's normalization state: recommendations and scale events."""

    def __init__(
        self,
        *,
        min_replicas: int,
        max_replicas: int,
        behavior: HPABehavior | None = None,
        tolerance: float = 0.1,
    ) -> None:
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.behavior = behavior or HPABehavior()
        self.tolerance = tolerance
        self.recommendations: list[tuple[float, int]] = []
        self.up_events: list[tuple[float, int]] = []
        self.down_events: list[tuple[float, int]] = []

    def within_tolerance(self, ratio: float) -> bool:
        return abs(1.0 - ratio) <= self.tolerance

    def reconcile(self, now: float, current: int, metric_desired: int | None) -> int:
        """``reconcileAutoscaler``: the replicas to write to the scale subresource.

        ``metric_desired`` None means the metric could not be computed, and the
        HPA then leaves the scale alone.
        """
        if current > self.max_replicas:
            desired = self.max_replicas
        elif current < self.min_replicas:
            desired = self.min_replicas
        elif metric_desired is None:
            return current
        else:
            desired = self.normalize(now, current, metric_desired)
        if desired > current:
            self.up_events.append((now, desired - current))
        elif desired < current:
            self.down_events.append((now, current - desired))
        self._forget(now)
        return desired

    def normalize(self, now: float, current: int, desired: int) -> int:
        """``normalizeDesiredReplicasWithBehaviors``."""
        stabilized = self._stabilize(now, current, desired)
        return self._rate_limited(now, current, stabilized)

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        """``stabilizeRecommendationWithBehaviors``."""
        up_rec = down_rec = desired
        up_cutoff = now - self.behavior.up_window_s
        down_cutoff = now - self.behavior.down_window_s
        for t, rec in self.recommendations:
            if t > up_cutoff:
                up_rec = min(rec, up_rec)
            if t > down_cutoff:
                down_rec = max(rec, down_rec)
        recommendation = current
        if recommendation < up_rec:
            recommendation = up_rec
        if recommendation > down_rec:
            recommendation = down_rec
        keep_from = now - max(self.behavior.up_window_s, self.behavior.down_window_s)
        self.recommendations = [(t, r) for t, r in self.recommendations if t >= keep_from]
        self.recommendations.append((now, desired))
        return recommendation

    def _rate_limited(self, now: float, current: int, desired: int) -> int:
        """``convertDesiredReplicasWithBehaviorRate``."""
        if desired > current:
            limit = max(self._up_limit(now, current), current)
            allowed = min(self.max_replicas, limit)
            return min(desired, allowed)
        if desired < current:
            limit = min(self._down_limit(now, current), current)
            allowed = max(self.min_replicas, limit)
            return max(desired, allowed)
        return desired

    def _period_start(self, now: float, current: int, period_s: float) -> int:
        cutoff = now - period_s
        added = sum(c for t, c in self.up_events if t > cutoff)
        deleted = sum(c for t, c in self.down_events if t > cutoff)
        return current - added + deleted

    def _up_limit(self, now: float, current: int) -> int:
        """``calculateScaleUpLimitWithScalingRules`` with selectPolicy Max."""
        result = -(2**31)
        for p in self.behavior.up_policies:
            start = self._period_start(now, current, p.period_s)
            if p.type == "Pods":
                proposed = start + p.value
            else:
                proposed = math.ceil(start * (1 + p.value / 100))
            result = max(result, proposed)
        return result

    def _down_limit(self, now: float, current: int) -> int:
        """``calculateScaleDownLimitWithBehaviors`` with selectPolicy Max."""
        result = 2**31 - 1
        for p in self.behavior.down_policies:
            start = self._period_start(now, current, p.period_s)
            # Percent: Go's int32() truncates.
            proposed = start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
            result = min(result, proposed)
        return result

    def _forget(self, now: float) -> None:
        longest = max(
            (p.period_s for p in (*self.behavior.up_policies, *self.behavior.down_policies)),
            default=0.0,
        )
        self.up_events = [(t, c) for t, c in self.up_events if t > now - longest]
        self.down_events = [(t, c) for t, c in self.down_events if t > now - longest]


def plain_metric_replicas(
    *,
    current: int,
    metrics: dict[int, int],
    missing: Sequence[int],
    target_milli: int,
    controller: HPAController,
) -> int | None:
    """``calcPlainMetricReplicas`` for a Pods metric (values in milli-units).

    ``metrics`` holds the pods that have a value; ``missing`` the live pods
    that do not (loading pods: Running, unready, no metrics endpoint yet).
    There are no Pending pods in this model, so no "unready" set.
    """
    if not metrics:
        return None  # "did not receive metrics for targeted pods"
    ready_count = len(metrics)
    ratio = (sum(metrics.values()) // len(metrics)) / target_milli
    if not missing:
        if controller.within_tolerance(ratio):
            return current
        return math.ceil(ratio * ready_count)
    filled = dict(metrics)
    if ratio < 1.0:
        filled.update(dict.fromkeys(missing, target_milli))
    elif ratio > 1.0:
        filled.update(dict.fromkeys(missing, 0))
    new_ratio = (sum(filled.values()) // len(filled)) / target_milli
    if (
        controller.within_tolerance(new_ratio)
        or (ratio < 1.0 < new_ratio)
        or (ratio > 1.0 > new_ratio)
    ):
        return current
    new_replicas = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and new_replicas > current) or (new_ratio > 1.0 and new_replicas < current):
        return current
    return new_replicas


def external_per_pod_replicas(
    *, status_replicas: int, usage_milli: int, target_milli: int, controller: HPAController
) -> int:
    """``GetExternalPerPodMetricReplicas`` (External metric, AverageValue target)."""
    ratio = usage_milli / (target_milli * status_replicas)
    if controller.within_tolerance(ratio):
        return status_replicas
    return math.ceil(usage_milli / target_milli)


class HPAPolicy:
    """HPA on a Pods metric: average Triton queue depth per pod, via Prometheus.

    Every ``sync_s`` (the controller's ``--horizontal-pod-autoscaler-sync-period``)
    it reads the per-pod values the Prometheus Adapter serves (the latest
    Prometheus scrape), computes the proposal and normalizes it.
    """

    def __init__(
        self,
        *,
        target: float,
        min_replicas: int,
        max_replicas: int,
        sync_s: float = 15.0,
        sync_offset_s: float = 7.5,
        prometheus: Prometheus | None = None,
        behavior: HPABehavior | None = None,
        name: str = "hpa",
    ) -> None:
        self.name = name
        self.target_milli = _milli(target)
        self.sync_s = sync_s
        self.next_sync = sync_offset_s
        self.prometheus = prometheus or Prometheus()
        self.controller = HPAController(
            min_replicas=min_replicas, max_replicas=max_replicas, behavior=behavior
        )
        self.next_tick = min(self.next_sync, self.prometheus.next_scrape)

    def tick(self, view: ClusterView) -> int | None:
        self.prometheus.advance(view)
        out: int | None = None
        if _due(self.next_sync, view.now):
            self.next_sync += self.sync_s
            out = self.sync(view)
        self.next_tick = min(self.next_sync, self.prometheus.next_scrape)
        return out

    def sync(self, view: ClusterView) -> int:
        live = (*view.ready, *view.loading)
        values = self.prometheus.per_pod(live)
        metrics = {pid: _milli(v) for pid, v in values.items()}
        missing = [pid for pid in live if pid not in metrics]
        proposal = plain_metric_replicas(
            current=view.spec_replicas,
            metrics=metrics,
            missing=missing,
            target_milli=self.target_milli,
            controller=self.controller,
        )
        return self.controller.reconcile(view.now, view.spec_replicas, proposal)


class KEDAPolicy:
    """KEDA's Prometheus scaler feeding an HPA (External metric, AverageValue).

    The query is ``sum(nv_inference_pending_request_count{...})`` and the
    threshold is the per-replica target. By default (``useCachedMetrics:
    false``) KEDA's metrics server runs the query whenever the HPA asks, i.e.
    every HPA sync; ``pollingInterval`` (30 s) then only drives activation
    (0 ↔ 1), which is off here. With ``cached=True`` the HPA reads the value
    KEDA cached at its last poll.
    """

    def __init__(
        self,
        *,
        target: float,
        min_replicas: int,
        max_replicas: int,
        sync_s: float = 15.0,
        sync_offset_s: float = 7.5,
        polling_s: float = 30.0,
        polling_offset_s: float = 7.5,
        cached: bool = False,
        prometheus: Prometheus | None = None,
        behavior: HPABehavior | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name or ("keda-cached" if cached else "keda")
        self.target_milli = _milli(target)
        self.sync_s = sync_s
        self.next_sync = sync_offset_s
        self.polling_s = polling_s
        self.cached = cached
        self.next_poll = polling_offset_s if cached else math.inf
        self.cache: float | None = None
        self.prometheus = prometheus or Prometheus()
        self.controller = HPAController(
            min_replicas=min_replicas, max_replicas=max_replicas, behavior=behavior
        )
        self.next_tick = self._next()

    def _next(self) -> float:
        return min(self.next_sync, self.next_poll, self.prometheus.next_scrape)

    def tick(self, view: ClusterView) -> int | None:
        self.prometheus.advance(view)
        live = (*view.ready, *view.loading)
        if _due(self.next_poll, view.now):
            self.next_poll += self.polling_s
            self.cache = self.prometheus.total(live)
        out: int | None = None
        if _due(self.next_sync, view.now):
            self.next_sync += self.sync_s
            value = self.cache if self.cached else self.prometheus.total(live)
            proposal = None
            if value is not None and view.spec_replicas > 0:
                proposal = external_per_pod_replicas(
                    status_replicas=view.spec_replicas,
                    usage_milli=_milli(value),
                    target_milli=self.target_milli,
                    controller=self.controller,
                )
            out = self.controller.reconcile(view.now, view.spec_replicas, proposal)
        self.next_tick = self._next()
        return out


# --------------------------------------------------------------------------- #
# Knative KPA (pkg/autoscaler/scaling/autoscaler.go).


def kpa_target(
    container_concurrency: int, utilization: float = 0.7, annotation: float | None = None
) -> float:
    """``ResolveMetricTarget`` (pkg/reconciler/autoscaling/resources/target.go).

    The per-pod concurrency the decider aims for: the annotation target (if
    any) clamped to containerConcurrency (when set), else containerConcurrency
    (the 100 default when 0), times the target utilisation, at least 1. The
    clamp is why a target above a pod's slots cannot be configured in Knative.
    """
    total = float(container_concurrency or 100)
    if annotation is not None:
        total = annotation
        if container_concurrency:
            total = min(annotation, float(container_concurrency))
    return max(1.0, total * utilization)


class KPAPolicy:
    """Knative's KPA decider on concurrency, with the config-autoscaler defaults.

    Every ``scrape_s`` the collector records the revision's total concurrency
    (in-flight + queued at the pods, time-averaged over the last interval as
    the queue-proxy reports it) into 1 s buckets; every ``tick_s`` the decider
    runs ``Scale``: stable and panic window averages, the rate bounds from
    ready pods, panic mode entered when the panic window wants at least
    ``panic_threshold`` × the ready pods and left once no such tick happened
    for a stable window. The reconciler then applies min/max scale.
    """

    def __init__(
        self,
        *,
        target: float,
        min_replicas: int,
        max_replicas: int,
        stable_window_s: float = 60.0,
        panic_window_pct: float = 10.0,
        panic_threshold: float = 2.0,
        max_scale_up_rate: float = 1000.0,
        max_scale_down_rate: float = 2.0,
        scale_down_delay_s: float = 0.0,
        tick_s: float = 2.0,
        scrape_s: float = 1.0,
        name: str = "kpa",
    ) -> None:
        self.name = name
        self.target = target
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.stable_buckets = round(stable_window_s / scrape_s)
        self.panic_buckets = max(1, round(stable_window_s * panic_window_pct / 100 / scrape_s))
        self.stable_window_s = stable_window_s
        self.panic_threshold = panic_threshold
        self.max_scale_up_rate = max_scale_up_rate
        self.max_scale_down_rate = max_scale_down_rate
        self.scale_down_delay_s = scale_down_delay_s
        self.tick_s = tick_s
        self.scrape_s = scrape_s
        self.buckets: deque[float] = deque(maxlen=self.stable_buckets)
        self.next_scrape = scrape_s
        self.next_decide = tick_s
        self.next_tick = min(self.next_scrape, self.next_decide)
        self._area = 0.0
        self._area_t = 0.0
        self.panic_time: float | None = None
        self.max_panic_pods = 0
        self.delay_window: list[tuple[float, int]] = []
        self.panic_log: list[tuple[float, bool]] = []
        self.last_stable = 0.0
        self.last_panic = 0.0

    @property
    def panicking(self) -> bool:
        return self.panic_time is not None

    def tick(self, view: ClusterView) -> int | None:
        if _due(self.next_scrape, view.now):
            span = view.now - self._area_t
            if span > 0:
                self.buckets.append((view.concurrency_area - self._area) / span)
            self._area, self._area_t = view.concurrency_area, view.now
            self.next_scrape += self.scrape_s
        out: int | None = None
        if _due(self.next_decide, view.now):
            self.next_decide += self.tick_s
            out = self.scale(view.now, len(view.ready))
        self.next_tick = min(self.next_scrape, self.next_decide)
        return out

    def window_average(self, buckets: int) -> float:
        if not self.buckets:
            return 0.0
        values = list(self.buckets)[-buckets:]
        return math.fsum(values) / len(values)

    def scale(self, now: float, ready: int) -> int | None:
        """``autoscaler.Scale`` and the reconciler's min/max bounds."""
        if not self.buckets:
            return None  # no data yet: the decider reports an invalid result
        ready_pods = max(1.0, float(ready))
        stable = self.last_stable = self.window_average(self.stable_buckets)
        panic = self.last_panic = self.window_average(self.panic_buckets)
        max_up = math.ceil(self.max_scale_up_rate * ready_pods)
        max_down = math.floor(ready_pods / self.max_scale_down_rate)
        dspc = math.ceil(stable / self.target)
        dppc = math.ceil(panic / self.target)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))
        over = dppc / ready_pods >= self.panic_threshold
        if self.panic_time is None and over:
            self.panic_time = now
            self.panic_log.append((now, True))
        elif over:
            self.panic_time = now
        elif self.panic_time is not None and self.panic_time + self.stable_window_s < now:
            self.panic_time = None
            self.max_panic_pods = 0
            self.panic_log.append((now, False))
        desired = desired_stable
        if self.panic_time is not None:
            desired = max(desired, desired_panic)
            if desired > self.max_panic_pods:
                self.max_panic_pods = desired
            desired = self.max_panic_pods
        if self.scale_down_delay_s > 0:
            self.delay_window = [
                (t, d) for t, d in self.delay_window if t > now - self.scale_down_delay_s
            ]
            self.delay_window.append((now, desired))
            desired = max(d for _, d in self.delay_window)
        return min(max(desired, self.min_replicas), self.max_replicas)


# --------------------------------------------------------------------------- #
# Experiments (not Turnpike's shipped behaviour).


class GuardedTurnpikePolicy(TurnpikePolicy):
    """Turnpike's decision plus a *hypothetical* capacity guard on scale-down.

    Not what the operator does: ``run --explore`` uses it to size a suggested
    change. The real ``decide`` runs unchanged; a scale-down it returns is
    vetoed when the peak of in-flight requests over the stabilization window
    would exceed ``max_utilization`` of the slots left after removing the
    replicas (Triton exposes in-flight work, e.g. TensorRT-LLM's
    ``request_type="active"`` count, next to the queue depth).
    """

    def __init__(
        self,
        params: Params,
        *,
        slots: int,
        max_utilization: float = 0.8,
        name: str = "turnpike+guard",
    ) -> None:
        super().__init__(params, name=name)
        self.guard_slots = slots
        self.max_utilization = max_utilization
        self._in_flight: deque[tuple[float, int]] = deque()

    def tick(self, view: ClusterView) -> int | None:
        window = self.params.stabilization_window_s
        self._in_flight.append((view.now, view.in_service))
        while self._in_flight and self._in_flight[0][0] < view.now - window:
            self._in_flight.popleft()
        desired = super().tick(view)
        if desired is None or desired >= view.spec_replicas:
            return desired
        peak = max(n for _, n in self._in_flight)
        removed_ready = max(0, view.spec_replicas - desired - len(view.loading))
        left = len(view.ready) - removed_ready
        if left <= 0 or peak > self.max_utilization * left * self.guard_slots:
            return view.spec_replicas
        return desired


class PredictiveTurnpikePolicy(TurnpikePolicy):
    """CANDIDATE, not shipped: the real policy plus a short-horizon trend forecast.

    Diurnal and working-day ramps are predictable, and a replica asked for
    when the queue shows the ramp serves one model load too late. This wrapper
    keeps ``decide`` unchanged and adds a floor: a least-squares line through
    the in-flight + queued work of the last ``window_s``, extrapolated
    ``horizon_s`` ahead (the model-load time), divided by ``utilization`` ×
    the per-replica capacity the real policy learned (its history's
    ``slots``; no forecast before it learned one). The floor applies only
    when the slope is significant (more than ``min_t`` standard errors), so
    Poisson noise on a flat load does not buy replicas, and its growth is
    bounded like the policy's own scale-up (``max_scale_up_rate`` × ready),
    so a flash crowd's steep first seconds are not extrapolated without limit.
    The floor also limits scale-downs (never below what the forecast needs).
    """

    def __init__(
        self,
        params: Params,
        *,
        slots: int,
        horizon_s: float,
        window_s: float = 60.0,
        utilization: float = 0.8,
        min_t: float = 3.0,
        name: str = "turnpike-predictive (candidate)",
    ) -> None:
        super().__init__(params, slots=slots, name=name)
        self.horizon_s = horizon_s
        self.window_s = window_s
        self.utilization = utilization
        self.min_t = min_t
        self.work: deque[tuple[float, float]] = deque()
        self.last_forecast: float | None = None

    def forecast(self) -> float | None:
        """Work expected ``horizon_s`` from now, or None without a clear trend."""
        if len(self.work) < 8:
            return None
        ts = [t for t, _ in self.work]
        ws = [w for _, w in self.work]
        n = len(ts)
        mt, mw = math.fsum(ts) / n, math.fsum(ws) / n
        sxx = math.fsum((t - mt) ** 2 for t in ts)
        if sxx <= 0:
            return None
        slope = math.fsum((t - mt) * (w - mw) for t, w in zip(ts, ws, strict=True)) / sxx
        resid = math.fsum((w - mw - slope * (t - mt)) ** 2 for t, w in zip(ts, ws, strict=True))
        se = math.sqrt(resid / max(n - 2, 1) / sxx)
        if slope <= 0 or slope < self.min_t * se:
            return None
        return mw + slope * (ts[-1] + self.horizon_s - mt)

    def tick(self, view: ClusterView) -> int | None:
        in_flight = self.in_flight(view) or 0.0
        self.work.append((view.now, in_flight + view.queue))
        while self.work and self.work[0][0] < view.now - self.window_s:
            self.work.popleft()
        desired = super().tick(view)
        slots = self.history.slots
        ahead = self.forecast()
        self.last_forecast = ahead
        if desired is None or ahead is None or slots is None or slots <= 0:
            return desired
        need = math.ceil(ahead / (self.utilization * slots) - 1e-9)
        ready = len(view.ready)
        bound = max(math.ceil(ready * self.params.max_scale_up_rate), ready + 1)
        floor = min(need, self.params.max_replicas, max(bound, view.spec_replicas))
        return max(desired, floor)
