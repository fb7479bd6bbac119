"""A GPU-served request queue with replicas that take minutes to become ready.

The model, per simulated run:

* Requests arrive at the times of a :class:`~bench.autoscale_sim.traces.Trace`.
  With ``balancing="shared"`` they join one FIFO queue shared by all ready
  replicas (an activator or a queue-aware router: a request never waits
  beside a free slot). With ``"random"`` or ``"round-robin"`` (a plain
  Service: kube-proxy's iptables mode picks at random, IPVS ``rr`` in turn)
  each request is sent to one ready replica on arrival and waits in *that*
  replica's Triton queue, even while another replica has free slots. A
  removed replica finishes the requests queued at it before it frees its
  GPU; requests that arrive while no replica is ready wait in front of the
  Service and are spread over the first replicas to become ready.
* A ready replica serves up to ``slots`` requests at once (Triton's in-flight
  batch slots); each request holds a slot for its own service time. A request
  that finds no free slot waits; its *queue wait* is the time from arrival to
  the start of service.
* Triton's queue depth is the number of requests accepted but not started:
  the length of that queue, which the autoscalers see summed or per replica.
* A new replica holds its GPU from the moment it is created and serves only
  after ``load_s`` (scheduling, image, model load). Removing replicas takes
  loading ones first (newest first, as a ReplicaSet does), then the newest
  ready ones; a removed ready replica takes no new work and frees its GPU
  when its in-flight requests finish.

Time advances in steps of ``dt`` for the control plane (replicas becoming
ready, autoscaler ticks); within a step, arrivals and completions are handled
in exact time order, so a slot freed mid-step is reused at once. A run is a
pure function of the trace, the policy and the parameters.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from bench.autoscale_sim.traces import Trace

_EPS = 1e-6

Balancing = Literal["shared", "random", "round-robin"]
BALANCING: tuple[Balancing, ...] = ("shared", "random", "round-robin")


@dataclass(frozen=True, slots=True)
class ServingModel:
    """Parameters of the served model and the simulation itself."""

    slots: int = 8
    load_s: float = 90.0
    slo_wait_s: float = 2.0
    slo_target: float = 0.99
    dt: float = 0.1
    sample_s: float = 5.0
    balancing: Balancing = "shared"

    def __post_init__(self) -> None:
        if self.slots < 1 or self.load_s < 0 or self.dt <= 0 or self.sample_s < self.dt:
            raise ValueError("need slots >= 1, load_s >= 0, dt > 0 and sample_s >= dt")
        if self.balancing not in BALANCING:
            raise ValueError(f"balancing must be one of {BALANCING}")


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What an autoscaler may look at when it ticks (it picks what it uses).

    ``ready`` and ``loading`` are pod ids; ``ready`` excludes draining pods,
    which Kubernetes has already taken out of the Service's endpoints.
    ``concurrency_area`` is the integral of (in-flight + queued requests)
    over time up to ``now``: the difference of two readings divided by the
    interval is the time-averaged concurrency a Knative queue-proxy reports.
    ``busy`` and ``queues`` are per ready pod (aligned with ``ready``): what
    each pod's Triton reports as executing and pending. ``queues`` is empty
    with the shared queue, which belongs to no pod; ``queue`` is then the
    shared queue's length, else the sum over ready pods. Both default to
    empty so hand-built views in tests stay short.
    """

    now: float
    spec_replicas: int
    ready: tuple[int, ...]
    loading: tuple[int, ...]
    queue: int
    in_service: int
    concurrency_area: float
    busy: tuple[int, ...] = ()
    queues: tuple[int, ...] = ()


class Autoscaler(Protocol):
    """A policy under test. ``tick`` runs whenever ``now >= next_tick``."""

    name: str
    next_tick: float

    def tick(self, view: ClusterView) -> int | None:
        """The replica count to set (None: leave it); must advance ``next_tick``."""
        ...


@dataclass(slots=True)
class Series:
    """Fleet state sampled every ``ServingModel.sample_s`` seconds."""

    t: list[float] = field(default_factory=list)
    spec: list[int] = field(default_factory=list)
    holding: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    queue: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Result:
    """One policy on one trace, measured after the warm-up.

    ``waits`` and ``arrived`` cover requests that arrived after the warm-up;
    ``total_arrived``, ``completed`` and the end counts cover the whole run,
    so ``total_arrived == completed + in_service_at_end + queued_at_end``.
    """

    policy: str
    trace: str
    model: ServingModel
    duration_s: float
    waits: npt.NDArray[np.float64]
    arrived: int
    total_arrived: int
    completed: int
    in_service_at_end: int
    queued_at_end: int
    gpu_seconds: float
    actions: int
    pods_started: int
    series: Series
    # The most replicas ever spec'd (warm-up included): a run whose peak stays
    # below maxReplicas never hit the clamp, so it is also the run at any
    # larger maxReplicas (the runner reuses it instead of re-simulating).
    peak_spec: int = 0

    @property
    def slo_attainment(self) -> float:
        """Fraction of arrived requests whose queue wait was within the SLO.

        A request still queued at the end counts with its wait so far (a
        lower bound of its real wait).
        """
        if self.arrived == 0:
            return 1.0
        return float(np.count_nonzero(self.waits <= self.model.slo_wait_s + _EPS)) / self.arrived

    @property
    def meets_slo(self) -> bool:
        return self.slo_attainment >= self.model.slo_target

    def wait_percentile(self, q: float) -> float:
        return float(np.percentile(self.waits, q)) if self.arrived else 0.0

    @property
    def replica_hours(self) -> float:
        return self.gpu_seconds / 3600.0

    @property
    def mean_replicas(self) -> float:
        return self.gpu_seconds / self.duration_s


def simulate(
    trace: Trace,
    policy: Autoscaler,
    model: ServingModel | None = None,
    *,
    initial_replicas: int = 1,
) -> Result:
    """Replay ``trace`` against ``policy``; ``initial_replicas`` start ready.

    Everything before ``trace.warmup_s`` is simulated but not measured: no
    request that arrived then, no GPU time then and no scaling action then
    counts, and the series start at the end of the warm-up (as time 0).
    """
    m = model or ServingModel()
    slots = m.slots
    dt = m.dt
    load_s = m.load_s
    shared = m.balancing == "shared"
    round_robin = m.balancing == "round-robin"
    arrivals = trace.arrivals
    service = trace.service_s
    n = len(arrivals)
    # One draw per request, fixed by the trace's seed: every policy sends the
    # same request to the same position of its ready list (common random numbers).
    picks: list[float] = (
        np.random.default_rng([trace.seed, 4242, n]).uniform(size=n).tolist()
        if m.balancing == "random"
        else []
    )
    duration = trace.duration_s
    steps = round(duration / dt)
    sample_every = max(1, round(m.sample_s / dt))
    warmup = trace.warmup_s
    first = bisect.bisect_left(arrivals, warmup)

    waits = [math.nan] * n
    queue: deque[int] = deque()  # shared queue; or requests before any pod is ready
    heap: list[tuple[float, int]] = []  # (finish time, pod id)
    # Per pod, indexed by id.
    busy: list[int] = []
    pq: list[deque[int]] = []  # per-pod Triton queues (not shared balancing)
    created: list[float] = []
    ready_at: list[float] = []
    loading: dict[int, None] = {}  # in creation order
    ready: dict[int, None] = {}  # in order of becoming ready
    ready_list: list[int] = []  # ``ready`` as a list, for the balancer
    draining: set[int] = set()
    free: dict[int, None] = {}  # ready pods with a free slot (shared balancing)
    gpu_seconds = 0.0
    actions = 0
    pods_started = 0
    peak_spec = initial_replicas
    completed = 0
    queued = 0  # requests waiting anywhere (per-pod queues and ``queue``)
    rr_next = 0
    level = 0  # in-flight + queued
    area = 0.0
    area_t = 0.0
    idx = 0
    series = Series()

    def held(pid: int, until: float) -> float:
        return max(0.0, until - max(created[pid], warmup))

    def new_pod(now: float) -> int:
        busy.append(0)
        pq.append(deque())
        created.append(now)
        ready_at.append(now + load_s)
        return len(busy) - 1

    for _ in range(initial_replicas):
        pid = new_pod(0.0)
        ready_at[pid] = 0.0
        loading[pid] = None

    def start(i: int, pid: int, now: float) -> None:
        waits[i] = now - arrivals[i]
        busy[pid] += 1
        heapq.heappush(heap, (now + service[i], pid))

    def route(i: int, now: float) -> None:
        """Send request ``i`` to a ready pod (per-pod balancing only)."""
        nonlocal rr_next, queued
        if round_robin:
            rr_next %= len(ready_list)
            pid = ready_list[rr_next]
            rr_next += 1
        else:
            pid = ready_list[int(picks[i] * len(ready_list))]
        if busy[pid] < slots and not pq[pid]:
            start(i, pid, now)
        else:
            pq[pid].append(i)
            queued += 1

    def make_ready(pid: int, now: float) -> None:
        nonlocal queued
        del loading[pid]
        ready[pid] = None
        ready_list.append(pid)
        if shared:
            while queue and busy[pid] < slots:
                start(queue.popleft(), pid, now)
                queued -= 1
            if busy[pid] < slots:
                free[pid] = None
        else:
            while queue:
                queued -= 1
                route(queue.popleft(), now)

    def scale_to(desired: int, now: float) -> None:
        nonlocal gpu_seconds, pods_started, peak_spec, ready_list
        current = len(loading) + len(ready)
        if desired > current:
            for _ in range(desired - current):
                loading[new_pod(now)] = None
            if now >= warmup:
                pods_started += desired - current
            peak_spec = max(peak_spec, desired)
            return
        remove = current - desired
        for pid in reversed(list(loading)):
            if remove == 0:
                break
            del loading[pid]
            gpu_seconds += held(pid, now)
            remove -= 1
        for pid in reversed(list(ready)):
            if remove == 0:
                break
            del ready[pid]
            free.pop(pid, None)
            if busy[pid] == 0:
                gpu_seconds += held(pid, now)
            else:
                draining.add(pid)
            remove -= 1
        ready_list = list(ready)

    for k in range(steps):
        t = round(k * dt, 6)
        t_end = round((k + 1) * dt, 6)
        # Control plane at the start of the step.
        while loading:
            pid = next(iter(loading))
            if ready_at[pid] > t + _EPS:
                break
            make_ready(pid, t)
        while policy.next_tick <= t + _EPS:
            before = policy.next_tick
            view = ClusterView(
                now=t,
                spec_replicas=len(loading) + len(ready),
                ready=tuple(ready_list),
                loading=tuple(loading),
                queue=len(queue) if shared else sum(len(pq[p]) for p in ready_list),
                in_service=len(heap),
                concurrency_area=area + level * (t - area_t),
                busy=tuple(busy[p] for p in ready_list),
                queues=() if shared else tuple(len(pq[p]) for p in ready_list),
            )
            desired = policy.tick(view)
            if policy.next_tick <= before:
                raise RuntimeError(f"policy {policy.name} did not advance next_tick")
            if desired is not None:
                if desired < 0:
                    raise ValueError(f"policy {policy.name} asked for {desired} replicas")
                if desired != view.spec_replicas:
                    if t >= warmup:
                        actions += 1
                    scale_to(desired, t)
        if k % sample_every == 0 and t >= warmup:
            series.t.append(t - warmup)
            series.spec.append(len(loading) + len(ready))
            series.holding.append(len(loading) + len(ready) + len(draining))
            series.ready.append(len(ready))
            series.queue.append(queued)

        # Requests within [t, t_end), in time order.
        while True:
            ta = arrivals[idx] if idx < n else math.inf
            tc = heap[0][0] if heap else math.inf
            if tc <= ta:
                if tc >= t_end:
                    break
                _, pid = heapq.heappop(heap)
                area += level * (tc - area_t)
                area_t = tc
                level -= 1
                completed += 1
                busy[pid] -= 1
                if not shared:
                    if pq[pid]:
                        start(pq[pid].popleft(), pid, tc)
                        queued -= 1
                    elif pid in draining and busy[pid] == 0:
                        draining.discard(pid)
                        gpu_seconds += held(pid, tc)
                elif pid in draining:
                    if busy[pid] == 0:
                        draining.discard(pid)
                        gpu_seconds += held(pid, tc)
                elif queue:
                    start(queue.popleft(), pid, tc)
                    queued -= 1
                else:
                    free[pid] = None
            else:
                if ta >= t_end:
                    break
                area += level * (ta - area_t)
                area_t = ta
                level += 1
                if not shared and ready_list:
                    route(idx, ta)
                elif shared and free:
                    pid = next(iter(free))
                    start(idx, pid, ta)
                    if busy[pid] >= slots:
                        del free[pid]
                else:
                    queue.append(idx)
                    queued += 1
                idx += 1

    end = steps * dt
    for pid in (*loading, *ready, *draining):
        gpu_seconds += held(pid, end)
    for i in queue:
        waits[i] = end - arrivals[i]
    for q in pq:
        for i in q:
            waits[i] = end - arrivals[i]
    return Result(
        policy=policy.name,
        trace=trace.name,
        model=m,
        duration_s=end - warmup,
        waits=np.asarray(waits[first:idx], dtype=np.float64),
        arrived=idx - first,
        total_arrived=idx,
        completed=completed,
        in_service_at_end=len(heap),
        queued_at_end=queued,
        gpu_seconds=gpu_seconds,
        actions=actions,
        pods_started=pods_started,
        series=series,
        peak_spec=peak_spec,
    )
