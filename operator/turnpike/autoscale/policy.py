"""The scaling policy: how many Triton replicas a deployment should run.

Pure code. Every input, including the time, is an argument, so each rule can
be tested with a scripted sequence of samples and a restored history gives
the same answer as an uninterrupted one.

The shape follows Knative's KPA and the HPA, tuned for GPU replicas, which
take minutes to load a model and cost real money while idle:

* Scale up on the panic window (seconds): its mean smooths a single-scrape
  spike that the current replicas drain on their own, and the latest sample
  must still be above target so a burst that already drained is not chased.
* Scale-up is bounded by ``max_scale_up_rate`` times the *ready* replicas
  (at least one more). Replicas still loading do not raise the bound, so a
  backlog that grows while they load cannot stampede into ever more pods.
* Scale down only when the highest sample over the whole stabilization window
  is below target, and only when samples cover that window without gaps.
  A replica removed too early comes back minutes later, after a cold load.
* Scale down by at most ``max_scale_down_step`` replicas per
  ``scale_down_period_s`` (60 s), counting the removals the history records,
  not per decision: the queue only shows an undersized fleet once it is
  saturated, so stepping every scrape overshoots.
* Scale up on in-flight work too, once a replica's slots are known: above
  ``capacity_utilization`` of them, before anything waits (the queue alone
  fires only when every slot is already full).
* Never scale below what the requests in flight need: the peak in-flight
  count of the stabilization window over ``capacity_utilization`` (80 %) of
  each replica's capacity, learned as in-flight per ready replica while
  requests waited. With hard slot limits the queue is ~0 right up to
  saturation, so a queue-only rule cannot tell "idle" from "full".
* Missing, stale or partial metrics never scale down.
* Load per replica divides by the spec'd replicas, not the ready ones: pods
  that are still starting are capacity already paid for.
* With ``min_replicas`` 0 (see :func:`_scale_to_zero`): a replica is removed
  for good only after ``scale_to_zero_idle_s`` without any work, never while
  one is starting and never without a gateway reporting; at zero, requests
  held at a gateway wake one replica.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from turnpike.api.modeldeployment import Autoscaling
from turnpike.api.status import ScalingDecision
from turnpike.autoscale.history import History, Sample, round_value
from turnpike.autoscale.signal import Observation

Metric = Literal["queueDepth", "queueTime"]
ScaleUpBase = Literal["ready", "spec"]
Direction = Literal["up", "down", "hold"]
# Called with the replica count the policy wants; returns the most the
# capacity layer allows (None: no limit). Must be deterministic, or a
# restored history no longer reproduces decisions.
BudgetCap = Callable[[int], int | None]

# Staleness limit in scrape intervals when Params.stale_after_s is unset.
STALE_AFTER_SCRAPES = 3
SCALE_DOWN_PERIOD_S = 60.0
CAPACITY_UTILIZATION: float | None = 0.8
SCALE_UP_BASE: ScaleUpBase = "ready"
SCALE_UP_PERIOD_S = 15.0
_EPS = 1e-9
# Metric values above this are unusable (a broken exporter, not a queue): they
# hold the count like missing metrics. The metric parser refuses per-pod values
# above 2**53; this also bounds sums over a whole fleet and derived means.
MAX_USABLE_METRIC = 1e15
# Replica counts computed from the metric saturate here before rounding, far
# above any maxReplicas: a division by a tiny target must not overflow math.ceil.
_MAX_WANTED = 1e12


@dataclass(frozen=True, slots=True)
class Params:
    """The Autoscaling spec plus replica bounds, detached from pydantic.

    Defaults mirror the API's defaults; see :meth:`from_spec`.
    """

    min_replicas: int = 1
    max_replicas: int = 1
    metric: Metric = "queueDepth"
    target: float = 4.0
    tolerance: float = 0.1
    scrape_interval_s: float = 2.0
    panic_window_s: float = 6.0
    stabilization_window_s: float = 120.0
    max_scale_up_rate: float = 2.0
    max_scale_down_step: int = 1
    stale_after_s: float | None = None
    # Not in the API (yet): the period max_scale_down_step is counted over.
    # 0 restores the old rule (one step per decision).
    scale_down_period_s: float = SCALE_DOWN_PERIOD_S
    # Capacity guard: the most of the remaining replicas' empirical slots the
    # recent in-flight peak may fill after a scale-down. None disables it.
    capacity_utilization: float | None = CAPACITY_UTILIZATION
    # Scale-up bound base: "ready" (the ready replicas) or "spec" (ready and
    # starting, i.e. every replica already paid for).
    scale_up_base: ScaleUpBase = SCALE_UP_BASE
    scale_up_period_s: float = SCALE_UP_PERIOD_S
    # Scale up on in-flight work above work_utilization of the learned slots,
    # before a queue forms (see _scale_up_on_work); None: never.
    work_utilization: float | None = 0.8
    # With min_replicas 0: how long nothing may be queued, executing or held
    # before the last replica goes.
    scale_to_zero_idle_s: float = 300.0

    def __post_init__(self) -> None:
        problems = []
        if self.min_replicas < 0:
            problems.append("min_replicas must be >= 0")
        if self.max_replicas < self.min_replicas:
            problems.append("max_replicas must be >= min_replicas")
        if not self.target > 0:
            problems.append("target must be > 0")
        if not 0 <= self.tolerance < 1:
            problems.append("tolerance must be in [0, 1)")
        if not self.scrape_interval_s > 0:
            problems.append("scrape_interval_s must be > 0")
        if self.panic_window_s < 0 or self.stabilization_window_s < 0:
            problems.append("windows must be >= 0")
        if not self.max_scale_up_rate > 1:
            problems.append("max_scale_up_rate must be > 1")
        if self.max_scale_down_step < 1:
            problems.append("max_scale_down_step must be >= 1")
        if self.stale_after_s is not None and not self.stale_after_s > 0:
            problems.append("stale_after_s must be > 0")
        if self.scale_down_period_s < 0:
            problems.append("scale_down_period_s must be >= 0")
        if self.scale_to_zero_idle_s < 0:
            problems.append("scale_to_zero_idle_s must be >= 0")
        if self.work_utilization is not None and not 0 < self.work_utilization <= 1:
            problems.append("work_utilization must be in (0, 1]")
        if self.capacity_utilization is not None and not 0 < self.capacity_utilization <= 1:
            problems.append("capacity_utilization must be in (0, 1]")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_spec(
        cls, autoscaling: Autoscaling, *, min_replicas: int, max_replicas: int | None
    ) -> Params:
        """Params of a ModelDeployment; an unset max pins replicas to the min."""
        return cls(
            min_replicas=min_replicas,
            max_replicas=max_replicas if max_replicas is not None else min_replicas,
            metric="queueTime" if autoscaling.metric.value == "queueTime" else "queueDepth",
            target=autoscaling.target,
            tolerance=autoscaling.tolerance,
            scrape_interval_s=float(autoscaling.scrape_interval_seconds),
            panic_window_s=float(autoscaling.panic_window_seconds),
            stabilization_window_s=float(autoscaling.stabilization_window_seconds),
            max_scale_up_rate=autoscaling.max_scale_up_rate,
            max_scale_down_step=autoscaling.max_scale_down_step,
            scale_down_period_s=float(autoscaling.scale_down_period_seconds),
            scale_to_zero_idle_s=float(autoscaling.scale_to_zero_idle_seconds),
        )

    @property
    def capacity_utilization_pct(self) -> float:
        return (self.capacity_utilization or 0.0) * 100

    @property
    def stale_limit_s(self) -> float:
        if self.stale_after_s is not None:
            return self.stale_after_s
        return STALE_AFTER_SCRAPES * self.scrape_interval_s


@dataclass(frozen=True, slots=True)
class SLOSignal:
    """The latency objective's view of this tick (see :func:`turnpike.slo`).

    ``latency_ms`` is the mean of the SLO's latency over the last interval and
    ``queue_wait_ms`` the queue wait within it: only that part shrinks with
    more replicas. ``burn_rate`` is the error budget's spending over the last
    minutes (1: sustainable).
    """

    name: str
    threshold_ms: float
    latency_ms: float | None
    queue_wait_ms: float | None
    burn_rate: float | None
    # True when the objective is on the queue wait itself (no service time in it).
    on_queue_wait: bool = False


@dataclass(frozen=True, slots=True)
class GatewayLoad:
    """What the gateways in front of a deployment report for it.

    Passed only while at least one gateway answers: "no gateway" and "a gateway
    holding nothing" must differ, because only a reporting gateway can wake a
    deployment at zero.
    """

    held: int  # requests waiting at the gateways for a ready replica


@dataclass(frozen=True, slots=True)
class Decision:
    """What to run and why; ``history`` is the state to store for next time."""

    replicas: int
    current: int
    reason: str
    history: History
    # What the policy asked for within min/max before the tier's budget capped
    # it (equal to replicas when nothing capped it): the capacity condition
    # reports a blocked wish as BudgetExhausted. None: not computed (hold paths).
    wanted: int | None = None
    # The metric scaled to per spec'd replica (queue per replica for
    # queueDepth); None when metrics were unusable. Fits status.queueDepth.
    per_replica: float | None = None
    metrics_stale: bool = False
    metrics_partial: bool = False
    limited_by_rate: bool = False
    limited_by_budget: bool = False
    clamped: bool = False

    @property
    def direction(self) -> Direction:
        if self.replicas > self.current:
            return "up"
        if self.replicas < self.current:
            return "down"
        return "hold"

    @property
    def changed(self) -> bool:
        return self.replicas != self.current

    def as_status(self, time: str) -> ScalingDecision:
        """The record for ``status.lastScale``; ``time`` is RFC 3339."""
        return ScalingDecision(
            time=time, from_replicas=self.current, to_replicas=self.replicas, reason=self.reason
        )


@dataclass(slots=True)
class _Flags:
    metrics_stale: bool = False
    metrics_partial: bool = False
    limited_by_rate: bool = False
    limited_by_budget: bool = False
    clamped: bool = False


def decide(
    params: Params,
    *,
    current: int,
    ready: int,
    starting: int,
    history: History,
    now: float,
    observation: Observation | None,
    budget: int | BudgetCap | None = None,
    slo: SLOSignal | None = None,
    gateway: GatewayLoad | None = None,
) -> Decision:
    """Desired replicas for one tick.

    ``current`` is the spec'd replica count, ``ready`` and ``starting`` the
    pods that serve and the pods still loading. ``now`` and the observation's
    time share one wall clock (seconds since the epoch): the history outlives
    the process, so a monotonic clock would not do. ``budget`` is the most
    replicas the GPU capacity layer grants; it caps growth but never removes
    running replicas by itself. ``slo``, with an SLO set, also scales up when the
    SLO's latency is above its threshold and holds scale-downs while its error
    budget burns (see :func:`_serve_slo`).
    ``gateway`` is what the gateways report (None: none
    answers); with ``min_replicas`` 0 it decides scale to and from zero.
    """
    if current < 0 or ready < 0 or starting < 0:
        raise ValueError("replica counts must be >= 0")
    now_ms = _ms(now)
    if history.metric != params.metric:
        history = History.empty(params.metric)

    # Pods that answered are serving even if the caller's ready count lags.
    serving = max(ready, observation.pods_ok) if observation is not None else ready
    value, missing_why = _value(params, observation, now, serving)
    flags = _Flags()
    if observation is not None and value is not None and not observation.partial:
        busy = observation.in_flight
        in_flight = _usable(busy, "in flight")[0] if busy is not None else None
        sample = Sample(_ms(observation.time), value, serving, in_flight)
        history = history.record(sample, max_gap_ms=_ms(params.stale_limit_s))
    history = history.trimmed(
        now_ms=now_ms,
        keep_ms=_ms(
            max(
                params.panic_window_s,
                params.stabilization_window_s,
                params.scale_down_period_s,
                params.scale_up_period_s,
            )
        ),
        panic_ms=_ms(params.panic_window_s),
    )
    per_replica: float | None = None
    if observation is None or value is None:
        flags.metrics_stale = True
        desired, reason = current, f"{missing_why}: hold {current}"
    else:
        flags.metrics_partial = observation.partial
        load = _load(params.metric, value, serving)
        per_replica = load / current if current else None
        desired, reason = _recommend(
            params, current, ready, starting, history, now_ms, load, observation, flags
        )
        if slo is not None:
            desired, reason = _serve_slo(
                params, slo, current, ready, serving, desired, reason, flags
            )

    if params.min_replicas == 0:
        history = _note_work(history, now_ms, current, observation, value, gateway)
        desired, reason = _scale_to_zero(
            params, current, starting, history, now_ms, gateway, desired, reason, flags
        )
    desired, reason = _clamp(params, current, desired, reason, flags)
    wanted = desired
    desired, reason = _cap(budget, current, desired, reason, flags)
    if observation is not None and value is not None and not observation.partial:
        history = history.mark_change(desired - current)
    return Decision(
        replicas=desired,
        wanted=wanted,
        current=current,
        reason=reason,
        history=history,
        per_replica=per_replica,
        metrics_stale=flags.metrics_stale,
        metrics_partial=flags.metrics_partial,
        limited_by_rate=flags.limited_by_rate,
        limited_by_budget=flags.limited_by_budget,
        clamped=flags.clamped,
    )


def _note_work(
    history: History,
    now_ms: int,
    current: int,
    observation: Observation | None,
    value: float | None,
    gateway: GatewayLoad | None,
) -> History:
    """Mark the history busy when anything shows work, or when nothing can tell.

    Unknown counts as busy (missing metrics never lead to zero), and so does the
    first tick (no mark yet): the idle window starts when measuring starts.
    """
    if history.busy_ms is None:
        return history.busy_at(now_ms)
    if gateway is not None and gateway.held > 0:
        return history.busy_at(now_ms)
    if current == 0 and (observation is None or not observation.pods):
        return history  # at zero nothing runs: idle unless the gateway holds requests
    if observation is None or value is None or observation.partial:
        return history.busy_at(now_ms)
    completed = sum(d.completed for d in observation.deltas.values())
    if value > 0 or (observation.in_flight or 0) > 0 or completed > 0:
        return history.busy_at(now_ms)
    if observation.in_flight is None:
        return history.busy_at(now_ms)
    return history


def _scale_to_zero(
    p: Params,
    current: int,
    starting: int,
    history: History,
    now_ms: int,
    gateway: GatewayLoad | None,
    desired: int,
    reason: str,
    flags: _Flags,
) -> tuple[int, str]:
    """Scale to and from zero (``min_replicas`` 0); otherwise never below one."""
    if current == 0:
        flags.metrics_stale = False  # nothing to read at zero is not a fault
        if gateway is None:
            return 0, "at zero; no gateway reports held requests, so nothing wakes it"
        if gateway.held > 0:
            return 1, f"{gateway.held} requests held at the gateway: wake 1 replica"
        return 0, "at zero; nothing held at the gateway"
    idle_ms = now_ms - (history.busy_ms if history.busy_ms is not None else now_ms)
    if desired > 1:
        return desired, reason
    quiet = gateway is not None and gateway.held == 0 and starting == 0
    if current == 1 and quiet and idle_ms >= _ms(p.scale_to_zero_idle_s):
        return 0, (
            f"idle for {idle_ms / 1000:.0f} s (nothing queued, executing or held at "
            f"the gateway; scaleToZeroIdleSeconds {p.scale_to_zero_idle_s:g}): 1→0"
        )
    if desired < 1:
        return 1, f"{reason}; kept 1 until idle for {p.scale_to_zero_idle_s:g} s"
    return desired, reason


def _recommend(
    p: Params,
    current: int,
    ready: int,
    starting: int,
    history: History,
    now_ms: int,
    load: float,
    obs: Observation,
    flags: _Flags,
) -> tuple[int, str]:
    band = f"target {_fmt(p.target)}{_unit(p)}±{_fmt(p.tolerance * 100)}%"
    upper = current * p.target * (1 + p.tolerance)
    lower = current * p.target * (1 - p.tolerance)
    partial = obs.partial
    prefix = f"metrics partial ({obs.pods_ok}/{obs.pods_total} pods): " if partial else ""

    # Scale up: panic-window mean, but only while the latest sample agrees.
    panic_from = now_ms - _ms(p.panic_window_s)
    panic = [_load(p.metric, s.value, s.ready) for s in history.samples if s.t_ms >= panic_from]
    if partial or not panic:
        panic.append(load)  # not recorded (partial) or older than the panic window
    panic_mean = sum(panic) / len(panic)
    up_load = min(panic_mean, load)
    if up_load > upper:
        wanted = _ceil(up_load / p.target)
        base = ready
        if p.scale_up_base == "spec":
            # Replicas already asked for count, but only once per period:
            # the count at the period's start, less what was added since.
            period_ms = _ms(p.scale_up_period_s)
            latest = history.samples[-1].t_ms if history.samples else now_ms
            added = sum(
                s.change
                for s in history.samples
                if s.change > 0 and now_ms - period_ms < s.t_ms < latest
            )
            base = max(ready, current - added)
        bound = max(_ceil(base * p.max_scale_up_rate), ready + 1)
        desired = max(current, min(wanted, bound))
        what = f"{prefix}{_describe(p, up_load, current)} > {band}"
        if desired == current:
            flags.limited_by_rate = True
            waiting = f"{starting} starting" if starting else f"{current - ready} unready"
            return current, (
                f"{what}: hold {current}, waiting for {waiting} replicas before growing "
                f"past {_fmt(p.max_scale_up_rate)}× the {ready} ready"
            )
        reason = f"{what}: scale up {current}→{desired} (panic window {_fmt(p.panic_window_s)}s"
        if wanted > desired:
            flags.limited_by_rate = True
            rate = _fmt(p.max_scale_up_rate)
            reason += f"; wanted {wanted}, maxScaleUpRate {rate}× {ready} ready"
        return desired, reason + ")"

    if not partial:
        ahead = _scale_up_on_work(p, history, now_ms, current, ready, flags)
        if ahead is not None:
            return ahead[0], prefix + ahead[1]

    now_text = f"{prefix}{_describe(p, load, current)}"
    if load > upper:
        return current, (
            f"{now_text} > {band}, but its {_fmt(p.panic_window_s)}s panic-window mean "
            f"{_fmt(panic_mean)}{_unit(p)} is not: hold {current}"
        )
    if load >= lower:
        return current, f"{now_text} within {band}: hold {current}"
    if partial:
        return current, f"{now_text} < {band}: hold {current}, never scale down on partial metrics"

    # Scale down: the highest sample of the whole stabilization window decides.
    window_s = p.stabilization_window_s
    window_from = now_ms - _ms(window_s)
    peak = max(
        [load]
        + [_load(p.metric, s.value, s.ready) for s in history.samples if s.t_ms >= window_from]
    )
    if peak >= lower:
        return current, (
            f"{now_text} < {band}, but it peaked at {_fmt(peak)}{_unit(p)} "
            f"in the last {_fmt(window_s)}s: hold {current}"
        )
    since = history.since_ms
    covered_ms = now_ms - since if since is not None else 0
    if covered_ms < _ms(window_s):
        return current, (
            f"{now_text} < {band}: hold {current} until metrics cover the "
            f"{_fmt(window_s)}s stabilization window ({_fmt(max(covered_ms, 0) / 1000)}s so far)"
        )
    wanted = _ceil(peak / p.target)
    step = p.max_scale_down_step
    period_ms = _ms(p.scale_down_period_s)
    if period_ms > 0:
        # At most max_scale_down_step replicas per period, counting the
        # removals decided on earlier samples (HPA's scale-down policy).
        latest = history.samples[-1].t_ms if history.samples else now_ms
        recent = [s for s in history.samples if s.t_ms > now_ms - period_ms and s.t_ms < latest]
        step -= sum(-s.change for s in recent if s.change < 0)
        if step <= 0:
            last = max(s.t_ms for s in recent if s.change < 0)
            return current, (
                f"{now_text} < {band}: hold {current}, scaled down "
                f"{_fmt((now_ms - last) / 1000)}s ago (maxScaleDownStep "
                f"{p.max_scale_down_step} per {_fmt(p.scale_down_period_s)}s)"
            )
    desired = max(wanted, current - step)
    limit = ""
    if wanted < desired:
        per = f" per {_fmt(p.scale_down_period_s)}s" if period_ms > 0 else ""
        limit = f"; wanted {wanted}, maxScaleDownStep {p.max_scale_down_step}{per}"
    guard = _capacity_floor(p, history, window_from)
    if guard is not None and guard[0] > desired:
        floor, busy, slots = guard
        desired = min(floor, current)
        limit = (
            f"; {_fmt(busy)} in flight at most over the last {_fmt(window_s)}s need "
            f"{floor} replicas at {_fmt(p.capacity_utilization_pct)}% of "
            f"{_fmt(slots)} slots each"
        )
        if desired >= current:
            return current, f"{now_text} < {band}: hold {current}{limit}"
    if desired >= current:
        return current, f"{now_text} < {band}: hold {current}"
    reason = (
        f"{_describe(p, peak, current)} at most over the last {_fmt(window_s)}s < {band}: "
        f"scale down {current}→{desired} (stabilization window"
    )
    return desired, reason + limit + ")"


def _scale_up_on_work(
    p: Params, history: History, now_ms: int, current: int, ready: int, flags: _Flags
) -> tuple[int, str] | None:
    """Scale up before anything waits, on in-flight work against learned slots.

    With hard slot limits the queue appears only once every slot is full, and
    a replica started then serves a model load later: the fair baselines (KPA,
    HPA on in-flight at 70-80 %) win every ramp that way. So, once a replica's
    slots are known, in-flight work above ``work_utilization`` of them
    (at least the share the scale-down guard keeps) scales up too: the panic
    window's mean, and only while the latest sample agrees, as for the queue.
    """
    slots = history.slots
    if p.work_utilization is None or not slots or slots <= 0:
        return None
    panic_from = now_ms - _ms(p.panic_window_s)
    busy = [
        s.in_flight for s in history.samples if s.t_ms >= panic_from and s.in_flight is not None
    ]
    if not busy:
        return None
    work = min(sum(busy) / len(busy), busy[-1])
    needed = _ceil(work / (p.work_utilization * slots))
    if needed <= current:
        return None
    bound = max(_ceil(ready * p.max_scale_up_rate), ready + 1)
    desired = max(current, min(needed, bound, p.max_replicas))
    if desired <= current:
        flags.limited_by_rate = True
        return None
    if needed > desired:
        flags.limited_by_rate = True
    return desired, (
        f"{_fmt(work)} in flight over the {_fmt(p.panic_window_s)}s panic window need {needed} "
        f"replicas at {_fmt(p.work_utilization * 100)}% of {_fmt(slots)} slots each: "
        f"scale up {current}→{desired} before requests wait"
    )


# The SLO scales on the queue wait only while queueing may take at least this
# share of the threshold: with a service time just under it, the wait that
# replicas can remove is below Triton's own floor and scaling would never end.
SLO_MIN_QUEUE_SHARE = 0.1


def _serve_slo(
    p: Params,
    slo: SLOSignal,
    current: int,
    ready: int,
    serving: int,
    desired: int,
    reason: str,
    flags: _Flags,
) -> tuple[int, str]:
    """The SLO's say in the decision, after the queue's.

    The queue wait may take what the threshold leaves after the service time
    (``allowed``); the replicas that keep it there are the HPA's ratio rule,
    serving × wait / allowed. Up: when the interval's mean latency is above the
    threshold, towards that count, bounded like any scale-up (max_scale_up_rate ×
    the ready replicas). Down: never below that count (projected as if the wait
    grew in proportion to the load per replica), so the queue rule and the SLO
    do not take turns, and never while the error budget burns faster than
    sustainable. A threshold the service time alone (nearly) uses up cannot be
    met by adding replicas: the reason says so and the SLO does not scale.
    """
    latency, wait = slo.latency_ms, slo.queue_wait_ms
    if latency is None or serving <= 0:
        return desired, reason
    waited = latency if slo.on_queue_wait else (wait or 0.0)
    service = latency - waited
    allowed = slo.threshold_ms - service
    what = f"SLO {slo.name}: latency {_fmt(latency)}ms"
    attainable = allowed >= SLO_MIN_QUEUE_SHARE * slo.threshold_ms
    needed = _ceil(serving * waited / allowed) if attainable else 0
    if latency > slo.threshold_ms:
        if not attainable:
            return desired, (
                f"{reason}; {what} > {_fmt(slo.threshold_ms)}ms, but requests spend "
                f"{_fmt(service)}ms outside the queue: more replicas cannot meet it"
            )
        wanted = max(current + 1, needed)
        bound = max(_ceil(ready * p.max_scale_up_rate), ready + 1)
        slo_desired = max(current, min(wanted, bound))
        if slo_desired <= desired:
            return desired, reason
        what += (
            f" > {_fmt(slo.threshold_ms)}ms (queue wait {_fmt(waited)}ms of the "
            f"{_fmt(allowed)}ms it may take)"
        )
        if slo_desired == current:
            flags.limited_by_rate = True
            return current, (
                f"{what}: hold {current}, waiting for replicas to be ready before growing "
                f"past {_fmt(p.max_scale_up_rate)}× the {ready} ready"
            )
        flags.limited_by_rate = wanted > slo_desired
        limit = f"; wanted {wanted}, maxScaleUpRate {_fmt(p.max_scale_up_rate)}× {ready} ready"
        return slo_desired, (
            f"{what}: scale up {current}→{slo_desired}" + (limit if flags.limited_by_rate else "")
        )
    if desired >= current:
        return desired, reason
    if slo.burn_rate is not None and slo.burn_rate > 1:
        return current, (
            f"{reason}; but SLO {slo.name} burns its error budget at "
            f"{_fmt(slo.burn_rate)}× the sustainable rate: hold {current}"
        )
    if attainable and needed > desired:
        floor = min(needed, current)
        return floor, (
            f"{reason}; but SLO {slo.name} needs {needed} replicas to keep the queue wait "
            f"({_fmt(waited)}ms now) within {_fmt(allowed)}ms: "
            + (f"hold {current}" if floor == current else f"{current}→{floor}")
        )
    return desired, reason


def _capacity_floor(
    p: Params, history: History, window_from: int
) -> tuple[int, float, float] | None:
    """Replicas the in-flight peak of the window needs: (floor, peak, slots).

    Slots per replica are empirical (the most in-flight per ready replica
    seen while requests waited, see :class:`~turnpike.autoscale.history.Sample`),
    so in-flight and slots share units whatever the in-flight source counts.
    None when the guard is off, no capacity was ever seen, or the window has
    no in-flight readings.
    """
    slots = history.slots
    if p.capacity_utilization is None or slots is None or slots <= 0:
        return None
    busy = [
        s.in_flight for s in history.samples if s.t_ms >= window_from and s.in_flight is not None
    ]
    if not busy:
        return None
    peak = max(busy)
    return _ceil(peak / (p.capacity_utilization * slots)), peak, slots


def _value(
    p: Params, obs: Observation | None, now: float, serving: int
) -> tuple[float | None, str]:
    """The metric value to decide on (rounded as stored), or None and why not."""
    if obs is None:
        return None, "no metrics"
    if not math.isfinite(obs.time):
        return None, "metrics unusable (no valid sample time)"
    if not obs.usable:
        if obs.pods_total == 0:
            return None, "no ready pods to read metrics from"
        return None, f"no metrics (all {obs.pods_total} pods failed: {obs.failure_summary()})"
    age = now - obs.time
    if age > p.stale_limit_s:
        return None, f"metrics stale ({_fmt(age)}s old > {_fmt(p.stale_limit_s)}s)"
    if -age > p.stale_limit_s:
        # A sample from the future would sort after every real one in the history.
        return None, f"metrics unusable (sampled {_fmt(-age)}s ahead of the clock)"
    if p.metric == "queueDepth":
        return _usable(obs.queue, "queue")
    if serving == 0:
        return None, "no ready replicas to weigh the queue time by"
    if obs.queue_time_ms is not None:
        return _usable(obs.queue_time_ms, "queue time")
    if obs.queue == 0:
        # Nothing completed and nothing waits: idle, which is a zero wait.
        return 0.0, ""
    return None, "no queue time yet (no request completed since the last scrape)"


def _usable(value: float, what: str) -> tuple[float | None, str]:
    """The value as stored, or None when no queue could produce it (NaN, infinite,
    negative or beyond MAX_USABLE_METRIC): decisions on it hold, never scale."""
    if not (math.isfinite(value) and 0 <= value <= MAX_USABLE_METRIC):
        return None, f"metrics unusable ({what} reads {value!r})"
    return round_value(value), ""


def _load(metric: Metric, value: float, serving: int) -> float:
    """Demand in units of "target × replicas", comparable across samples.

    Queue depth is already a total. A mean wait is per request, so it is
    weighted by the replicas that produced it: the HPA's ratio rule,
    desired = ceil(serving × wait / target).
    """
    return value if metric == "queueDepth" else value * serving


def _clamp(p: Params, current: int, desired: int, reason: str, flags: _Flags) -> tuple[int, str]:
    if desired < p.min_replicas:
        flags.clamped = True
        return p.min_replicas, f"{reason}; raised to minReplicas: {current}→{p.min_replicas}"
    if desired > p.max_replicas:
        flags.clamped = True
        return p.max_replicas, f"{reason}; limited to maxReplicas: {current}→{p.max_replicas}"
    return desired, reason


def _cap(
    budget: int | BudgetCap | None, current: int, desired: int, reason: str, flags: _Flags
) -> tuple[int, str]:
    allowed = budget(desired) if callable(budget) else budget
    if allowed is None or desired <= allowed:
        return desired, reason
    allowed = max(allowed, 0)
    capped = max(allowed, min(desired, current))
    if capped == desired:
        return desired, reason
    flags.limited_by_budget = True
    outcome = f"hold {current}" if capped == current else f"{current}→{capped}"
    return capped, f"{reason}; capped at GPU budget {allowed}: {outcome}"


def _describe(p: Params, load: float, replicas: int) -> str:
    if p.metric == "queueDepth":
        per = f" ({_fmt(load / replicas)}/replica)" if replicas else ""
        return f"queue {_fmt(load)} over {replicas} replicas{per}"
    per = _fmt(load / replicas) if replicas else _fmt(load)
    return f"queue wait {per}ms per replica over {replicas} replicas"


def _unit(p: Params) -> str:
    return "" if p.metric == "queueDepth" else "ms"


def _fmt(x: float) -> str:
    if not math.isfinite(x) or abs(x) >= 1e9:
        return f"{x:.3g}"
    if abs(x - round(x)) < 0.05:
        return str(round(x))
    return f"{x:.1f}"


def _ceil(x: float) -> int:
    """Ceiling that ignores float dust (12.3 / 4.1 must give 3, not 4), saturating
    at _MAX_WANTED (so +inf from a tiny divisor is merely "very many")."""
    return max(0, math.ceil(min(x, _MAX_WANTED) - _EPS))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
