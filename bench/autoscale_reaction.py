"""`make bench-autoscale`: how fast the autoscaler reacts to a load step, on real Triton.

For each scrape interval (default 1 s and 2 s) one queue-autoscaled
ModelDeployment (min 1, max 4, target 4 queued per replica) runs in the
namespace bench-reaction of the local cluster, with the operator as a
subprocess and real Triton pods on the real node (the local CPU Triton image,
Python backend, `sleepy`, 50 ms per request, one instance; the model fetched
by the rendered download init container from hack/modelserver.py). Each run:

1. waits for steady state: the Deployment at 1 replica, one Triton serving,
   the operator reading an empty queue, a quiet period longer than the panic
   window, then a random fraction of a scrape interval (so load steps land at
   random phases of the operator's tick);
2. t0: the load jumps from 0 to --concurrency closed-loop clients (16 against
   a 50 ms single-instance model: a queue of about 15 against a target of 4);
3. t1: a watch on the Deployment sees spec.replicas change; reaction = t1 - t0;
4. stops the load and lets the stabilization window bring it back to 1.

The operator runs with debug logs, which time every reconcile, so each run is
also split into "waiting for the next autoscaling tick" and "the tick itself"
(get, list pods, scrape, decide, apply), and the Triton queue is probed
directly to show when the step became visible. Acceptance (issue): median
reaction <= 2 x scrape interval + 1 s. Prints markdown; everything is bounded
in time and is removed at the end, also on Ctrl-C.

The cluster may be shared: the bench's operator runs under a service account
that can write only in bench-reaction (see isolate()), and a run whose scale-up
was written by some other operator is reported as disturbed and re-run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO)]

from hack import loadgen, localcluster, realnode  # noqa: E402
from hack.kubectl import Kubectl, ReadyPods  # noqa: E402
from hack.modelserver import ModelServer  # noqa: E402
from hack.operator_process import OperatorProcess, start_operator  # noqa: E402
from turnpike.api.modeldeployment import Autoscaling  # noqa: E402
from turnpike.kube import Kube, connect  # noqa: E402
from turnpike.kube.resources import DEPLOYMENT, MODEL_DEPLOYMENT  # noqa: E402

NAMESPACE = "bench-reaction"
NAME = "reaction"
SELECTOR = f"turnpike.dev/model-deployment={NAME}"
LEASE_ID = "turnpike-bench-reaction"
TARGET = 4.0
MAX_REPLICAS = 4
PENDING = re.compile(
    r'^nv_inference_pending_request_count\{[^}]*model="sleepy"[^}]*\}\s+(\S+)', re.MULTILINE
)
RECONCILED = re.compile(rf"^reconciled {NAMESPACE}/{NAME} in ([0-9.]+)s$")
SCALED_UP = f"event Normal ScaledUp on {NAMESPACE}/{NAME}: "


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop the run and clean up."""


@dataclass
class Run:
    interval_s: int
    index: int
    t0: float  # wall clock (time.time()) of the load step
    reaction_s: float | None = None  # t1 - t0; None: no change within the run timeout
    replicas_to: int | None = None
    queue_visible_s: float | None = None  # t0 → Triton's pending count >= concurrency / 2
    wait_for_tick_s: float | None = None  # t0 → start of the reconcile that scaled
    tick_to_write_s: float | None = None  # start of that reconcile → new replicas seen
    tick_duration_s: float | None = None  # whole reconcile (includes status + event after)
    ticks_without_scaling: int | None = None  # reconciles that started after t0 and held
    tick_period_s: float | None = None  # median gap between reconcile starts before t0
    phase_s: float | None = None  # t0 - start of the last reconcile before it
    reason: str = ""
    # The change was not this operator's: another operator on the shared cluster
    # reconciled the object first. Reported, left out of the summary, re-run.
    disturbed: bool = False


@dataclass
class Summary:
    interval_s: int
    runs: int
    measured: int
    disturbed: int
    median_s: float | None
    max_s: float | None
    bound_s: float
    passed: bool
    tick_period_s: float | None
    wait_for_tick_s: float | None
    tick_to_write_s: float | None
    tick_duration_s: float | None


@dataclass
class DeploymentWatch:
    """spec.replicas of the Deployment NAME, timestamped when the watch delivers a change."""

    kube: Kube
    replicas: int | None = None
    changes: list[tuple[float, int]] = field(default_factory=list)  # (time.time(), replicas)
    reconnects: list[float] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self, deadline: float) -> None:
        self._task = asyncio.create_task(self._loop(deadline), name="deployment-watch")

    async def _loop(self, deadline: float) -> None:
        first = True
        while time.monotonic() < deadline:
            if not first:
                self.reconnects.append(time.time())
            first = False
            remaining = int(min(900, max(5, deadline - time.monotonic())))
            try:
                async for _type, obj in self.kube.watch(
                    DEPLOYMENT, NAMESPACE, timeout_seconds=remaining
                ):
                    now = time.time()
                    if obj.get("metadata", {}).get("name") != NAME or _type == "DELETED":
                        continue
                    replicas = int(obj.get("spec", {}).get("replicas", 1))
                    if replicas != self.replicas:
                        self.replicas = replicas
                        self.changes.append((now, replicas))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the API server restarted a watch: reopen
                logging.debug("deployment watch: %s", error)
                await asyncio.sleep(0.2)

    def first_change_after(self, t: float) -> tuple[float, int] | None:
        return next(((at, r) for at, r in self.changes if at >= t), None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def model_deployment(interval_s: int, uri: str, image: str, product: str) -> dict[str, Any]:
    autoscaling: dict[str, Any] = {
        "enabled": True,
        "target": TARGET,
        "scrapeIntervalSeconds": interval_s,
        "panicWindowSeconds": panic_window_s(interval_s),
        "stabilizationWindowSeconds": stabilization_s(interval_s),
    }
    if "scale_down_period_seconds" in Autoscaling.model_fields:
        # Back to one replica as soon as the stabilization window allows, so runs
        # follow each other quickly; scale-down pacing is not what is measured.
        autoscaling["scaleDownPeriodSeconds"] = 0
    return {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": {"uri": uri, "backend": "python", "name": "sleepy"},
            "gpu": {"product": product},
            "runtime": {"image": image, "shmSize": "64Mi"},
            "minReplicas": 1,
            "maxReplicas": MAX_REPLICAS,
            "autoscaling": autoscaling,
        },
    }


def panic_window_s(interval_s: int) -> int:
    return 2 * interval_s


def stabilization_s(interval_s: int) -> int:
    # Far longer than one run's load (a few seconds), short enough to return to
    # one replica quickly between runs.
    return max(10, 5 * interval_s)


def bound_s(interval_s: int) -> float:
    return 2.0 * interval_s + 1.0


def check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise Interrupted


async def sleep_checked(seconds: float, stop: threading.Event) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        check_stop(stop)
        await asyncio.sleep(min(0.05, max(0.0, end - time.monotonic())))


def operator_metric(operator: OperatorProcess, name: str) -> float | None:
    try:
        samples = operator.metrics()
    except OSError:
        return None
    for key, value in samples.items():
        if key.startswith(name + "{") and f"name={NAME}" in key and f"namespace={NAMESPACE}" in key:
            return value
    return None


def operator_log(log_path: Path) -> tuple[list[tuple[float, float]], list[tuple[float, str]]]:
    """From the operator's JSON log: (start, end) wall times of every reconcile of NAME,
    and (time, message) of every ScaledUp event it posted on NAME."""
    ticks: list[tuple[float, float]] = []
    scaled: list[tuple[float, str]] = []
    with contextlib.suppress(OSError), log_path.open(errors="replace") as log:
        for line in log:
            if '"reconciled ' not in line and "ScaledUp" not in line:
                continue
            try:
                entry = json.loads(line)
                at = datetime.fromisoformat(entry["time"]).timestamp()
            except (ValueError, KeyError):
                continue
            message = str(entry.get("message", ""))
            match = RECONCILED.match(message)
            if match is not None:
                ticks.append((at - float(match.group(1)), at))
            elif message.startswith(SCALED_UP):
                scaled.append((at, message[len(SCALED_UP) :]))
    return sorted(ticks), scaled


def attribute(run: Run, t1: float, log_path: Path) -> None:
    """Split a run with the operator's reconcile timings (logged at the end of each)."""
    ticks, scaled = operator_log(log_path)
    before = [s for s, _ in ticks if s < run.t0][-12:]
    gaps = [b - a for a, b in itertools.pairwise(before)]
    if gaps:
        run.tick_period_s = statistics.median(gaps)
    if before:
        run.phase_s = run.t0 - before[-1]
    # The reconcile that applied the new replica count started before t1 and
    # ended after it (it writes the status and posts the event after the apply).
    # Log times have millisecond resolution: allow for it.
    slack = 0.002
    scaling = next(((s, e) for s, e in ticks if s <= t1 + slack and e >= t1 - slack), None)
    if scaling is None:
        run.reason = "no reconcile of this operator spans the change: another operator's"
        run.disturbed = True
        return
    run.wait_for_tick_s = scaling[0] - run.t0
    run.tick_to_write_s = t1 - scaling[0]
    run.tick_duration_s = scaling[1] - scaling[0]
    run.ticks_without_scaling = sum(1 for s, _ in ticks if run.t0 <= s < scaling[0])
    reason = next((m for at, m in scaled if scaling[0] - slack <= at <= scaling[1] + slack), None)
    if reason is None:
        run.disturbed = True
        reason = "no ScaledUp event from this operator in that reconcile: another operator's"
    run.reason = reason


async def probe_queue(
    metrics_url: str, threshold: float, t0: float, until: float, done: asyncio.Event
) -> float | None:
    """Seconds from t0 until Triton itself reports >= threshold pending requests."""
    import aiohttp

    async with aiohttp.ClientSession(
        trust_env=False, timeout=aiohttp.ClientTimeout(total=1.0)
    ) as session:
        while time.monotonic() < until and not done.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(metrics_url) as response:
                    text = await response.text()
                now = time.time()
                match = PENDING.search(text)
                if match and float(match.group(1)) >= threshold:
                    return now - t0
            await asyncio.sleep(0.05)
    return None


async def steady_state(
    watch: DeploymentWatch,
    kubelet: ReadyPods,
    operator: OperatorProcess,
    interval_s: int,
    stop: threading.Event,
) -> None:
    """1 replica, 1 Triton, an empty queue, then quiet for longer than the panic window."""
    deadline = time.monotonic() + stabilization_s(interval_s) + 180
    quiet = panic_window_s(interval_s) + 2 * interval_s
    while time.monotonic() < deadline:
        check_stop(stop)
        if (
            watch.replicas == 1
            and len(kubelet.ready_targets()) == 1
            and operator_metric(operator, "turnpike_queue_depth") == 0.0
        ):
            quiet_end = time.monotonic() + quiet
            while time.monotonic() < quiet_end and watch.replicas == 1:
                await sleep_checked(0.05, stop)
            if (
                watch.replicas == 1
                and len(kubelet.ready_targets()) == 1
                and (operator_metric(operator, "turnpike_queue_depth") == 0.0)
            ):
                return
        await sleep_checked(0.2, stop)
    raise TimeoutError(
        f"no steady state (replicas {watch.replicas}, "
        f"{len(kubelet.ready_targets())} Tritons) within the deadline"
    )


async def why_not_scaled(kube: Kube) -> str:
    """The ModelDeployment's conditions that are not as expected, for a run that timed out."""
    try:
        md = await kube.get(MODEL_DEPLOYMENT, NAMESPACE, NAME)
    except Exception as error:
        return f"no scale-up; reading the ModelDeployment failed: {error}"
    conditions = ((md or {}).get("status") or {}).get("conditions") or []
    odd = [
        f"{c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}"
        for c in conditions
        if (c.get("type") == "Degraded") == (c.get("status") == "True")
    ]
    return "no scale-up within the run's timeout; " + ("; ".join(odd) or "conditions all fine")


async def one_run(
    kube: Kube,
    watch: DeploymentWatch,
    kubelet: ReadyPods,
    operator: OperatorProcess,
    interval_s: int,
    index: int,
    concurrency: int,
    stop: threading.Event,
) -> Run:
    await steady_state(watch, kubelet, operator, interval_s, stop)
    # A load step lands at any phase of the operator's tick. The checks above talk
    # to the operator (its /metrics), which can answer late while a tick runs and so
    # line them up with its ticks: a random wait after them decorrelates t0.
    await sleep_checked(random.uniform(0, interval_s), stop)
    targets = kubelet.ready_targets()
    timeout_s = max(20.0, 6 * bound_s(interval_s))
    metrics_url = f"http://{targets[0].rsplit(':', 1)[0]}:8002/metrics"
    load = loadgen.Background(
        targets, [(timeout_s + 5, concurrency)], max_requests=20_000, request_timeout_s=10.0
    )
    t0 = time.time()
    run = Run(interval_s, index, t0)
    began = time.monotonic()
    load.start()
    done = asyncio.Event()
    probe = asyncio.create_task(
        probe_queue(metrics_url, concurrency / 2, t0, began + timeout_s, done)
    )
    try:
        change = None
        while time.monotonic() - began < timeout_s:
            check_stop(stop)
            change = watch.first_change_after(t0)
            if change is not None:
                break
            await asyncio.sleep(0.02)
    finally:
        done.set()
        load.stop()
        run.queue_visible_s = await probe
        await asyncio.to_thread(load.join, 30)
    if change is None:
        run.reason = await why_not_scaled(kube)
    else:
        run.reaction_s = change[0] - t0
        run.replicas_to = change[1]
        # The reconcile that scaled logs its duration when it ends (status, event).
        log_deadline = time.monotonic() + 10
        while time.monotonic() < log_deadline and not any(
            end >= change[0] for _, end in operator_log(operator.log_path)[0]
        ):
            await sleep_checked(0.2, stop)
        attribute(run, change[0], operator.log_path)
    return run


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(interval_s: int, all_runs: list[Run]) -> Summary:
    runs = [r for r in all_runs if not r.disturbed]
    reactions = [r.reaction_s for r in runs if r.reaction_s is not None]
    med = statistics.median(reactions) if reactions else None
    worst = max(reactions) if reactions and len(reactions) == len(runs) else None
    return Summary(
        interval_s=interval_s,
        runs=len(runs),
        measured=len(reactions),
        disturbed=len(all_runs) - len(runs),
        median_s=med,
        max_s=worst,
        bound_s=bound_s(interval_s),
        passed=med is not None and len(reactions) == len(runs) and med <= bound_s(interval_s),
        tick_period_s=median([r.tick_period_s for r in runs]),
        wait_for_tick_s=median([r.wait_for_tick_s for r in runs]),
        tick_to_write_s=median([r.tick_to_write_s for r in runs]),
        tick_duration_s=median([r.tick_duration_s for r in runs]),
    )


def markdown(summaries: list[Summary], runs: list[Run], concurrency: int, header: str) -> str:
    lines = [
        header,
        "",
        "| scrape interval | runs | median (s) | max (s) | bound 2×interval+1 (s) | result |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        worst = fmt(s.max_s) if s.max_s is not None else f"> timeout ({s.measured}/{s.runs})"
        runs_text = f"{s.runs} (+{s.disturbed} disturbed)" if s.disturbed else str(s.runs)
        lines.append(
            f"| {s.interval_s} s | {runs_text} | {fmt(s.median_s)} | {worst} "
            f"| {s.bound_s:g} | {'pass' if s.passed else 'FAIL'} |"
        )
    lines += [
        "",
        "Where the time goes (medians over the undisturbed runs):",
        "",
        "| scrape interval | tick period (s) | load step → tick start (s) "
        "| tick start → replicas written (s) | whole reconcile (s) |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.interval_s} s | {fmt(s.tick_period_s)} | {fmt(s.wait_for_tick_s)} "
            f"| {fmt(s.tick_to_write_s, 3)} | {fmt(s.tick_duration_s, 3)} |"
        )
    lines += [
        "",
        f"Every run (load step: 0 → {concurrency} concurrent requests):",
        "",
        "| interval | run | reaction (s) | queue visible in Triton (s) "
        "| last tick → t0 (s) | t0 → tick start (s) | tick → write (s) | ticks that held "
        "| replicas | decision |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        held = "-" if r.ticks_without_scaling is None else str(r.ticks_without_scaling)
        to = "-" if r.replicas_to is None else f"1→{r.replicas_to}"
        lines.append(
            f"| {r.interval_s} s | {r.index} | {fmt(r.reaction_s)} "
            f"| {fmt(r.queue_visible_s, 3)} | {fmt(r.phase_s)} | {fmt(r.wait_for_tick_s)} "
            f"| {fmt(r.tick_to_write_s, 3)} | {held} | {to} "
            f"| {'(disturbed, re-run) ' if r.disturbed else ''}{r.reason} |"
        )
    return "\n".join(lines)


def isolate(kubectl: Kubectl, directory: Path, lifetime_s: float) -> Path:
    """A kubeconfig for the bench's operator that can write only in NAMESPACE.

    The operator lists ModelDeployments and watches CapacityTiers cluster-wide
    even when --namespace is given, and tier events requeue every ModelDeployment
    it has seen. With the admin kubeconfig a bench operator would then write
    other people's tiers, PriorityClasses and ModelDeployments on the shared
    cluster; with this one those reconciles fail on a 403 and nothing outside
    NAMESPACE changes.
    """
    rules_everything = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
    read = ["get", "list", "watch"]
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": LEASE_ID, "namespace": NAMESPACE},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": LEASE_ID, "namespace": NAMESPACE},
            "rules": rules_everything,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": LEASE_ID, "namespace": NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEASE_ID},
            "subjects": [{"kind": "ServiceAccount", "name": LEASE_ID, "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": LEASE_ID},
            "rules": [
                {
                    "apiGroups": ["turnpike.dev"],
                    "resources": ["modeldeployments", "capacitytiers"],
                    "verbs": read,
                },
                {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": read},
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": read},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": LEASE_ID},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": LEASE_ID,
            },
            "subjects": [{"kind": "ServiceAccount", "name": LEASE_ID, "namespace": NAMESPACE}],
        },
    ]
    kubectl.apply(*objects)
    token = kubectl.run(
        "create", "token", LEASE_ID, "-n", NAMESPACE, f"--duration={int(max(600, lifetime_s))}s"
    ).stdout.strip()
    config = json.loads(kubectl.run("config", "view", "--raw", "--minify", "-o", "json").stdout)
    for user in config["users"]:
        user["user"] = {"token": token}
    path = directory / "kubeconfig"
    path.touch(mode=0o600)
    path.write_text(json.dumps(config))
    return path


def other_operators() -> int:
    """Other `turnpike run` processes on this machine (they may reconcile the bench object)."""
    count = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if (
                b"turnpike.cli" in argv
                and b"run" in argv
                and (f"--leader-election-id={LEASE_ID}".encode() not in argv)
            ):
                count += 1
    return count


async def bench(
    intervals: list[int], runs_per: int, concurrency: int, out: Path, stop: threading.Event
) -> tuple[list[Summary], list[Run], dict[str, Any]]:
    import numpy  # noqa: F401  (warm the load generator's imports before any t0)
    import tritonclient.http.aio  # noqa: F401

    was_running = localcluster.running() is not None
    print("==> local cluster", file=sys.stderr, flush=True)
    cluster = localcluster.ensure()
    started_cluster = cluster.bin_dir is not None and not was_running
    kubectl = Kubectl(cluster.kubectl(), cluster.kubeconfig)
    operator: OperatorProcess | None = None
    server: ModelServer | None = None
    kube: Kube | None = None
    watch: DeploymentWatch | None = None
    runs: list[Run] = []
    summaries: list[Summary] = []
    info: dict[str, Any] = {"other_operators": other_operators()}
    per_run_s = max(stabilization_s(i) for i in intervals) + 60
    lifetime = 300 + len(intervals) * 2 * runs_per * per_run_s
    secrets_dir = tempfile.TemporaryDirectory(prefix="bench-reaction-")
    try:
        kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        kubectl.run(
            "delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s", timeout=150
        )
        kubectl.run("create", "namespace", NAMESPACE)
        check_stop(stop)
        print("==> operator (debug logs time every reconcile)", file=sys.stderr, flush=True)
        operator_kubeconfig = isolate(kubectl, Path(secrets_dir.name), lifetime + 600)
        operator = start_operator(
            operator_kubeconfig,
            out / "operator.log",
            f"--namespace={NAMESPACE}",
            f"--leader-election-namespace={NAMESPACE}",
            f"--leader-election-id={LEASE_ID}",
            "--log-level=debug",
            "--log-format=json",
        )
        kube = await connect(str(cluster.kubeconfig))
        watch = DeploymentWatch(kube)
        watch.start(time.monotonic() + lifetime)
        pools = realnode.real_pools(localcluster.load_shape())
        if cluster.bin_dir is None or not pools:
            raise SystemExit("the benchmark needs the local cluster's real node")
        images = realnode.node_images(localcluster._read_state())
        image = realnode.image_ref(images, "tritonserver-cpu")
        server = ModelServer().start()
        kubelet = ReadyPods(kubectl.in_namespace(NAMESPACE), SELECTOR)
        for interval_s in intervals:
            check_stop(stop)
            print(
                f"==> scrape interval {interval_s}s: panic window {panic_window_s(interval_s)}s,"
                f" stabilization {stabilization_s(interval_s)}s",
                file=sys.stderr,
                flush=True,
            )
            kubectl.apply(
                model_deployment(interval_s, server.tarball_url, image, pools[0].product)
            )
            kubectl.run(
                "wait",
                "--for=condition=Ready",
                "--timeout=180s",
                f"md/{NAME}",
                "-n",
                NAMESPACE,
                timeout=150,
            )
            deadline = time.monotonic() + 120
            while not kubelet.ready_targets() and time.monotonic() < deadline:
                await sleep_checked(0.2, stop)
            if not kubelet.ready_targets():
                raise TimeoutError("no Triton serving the ModelDeployment's pod after 120s")
            mine: list[Run] = []
            index = 0
            # A run another operator disturbed is re-run, up to runs_per extra runs.
            while sum(not r.disturbed for r in mine) < runs_per and index < 2 * runs_per:
                index += 1
                run = await one_run(
                    kube, watch, kubelet, operator, interval_s, index, concurrency, stop
                )
                mine.append(run)
                print(
                    f"    run {index}: reaction {fmt(run.reaction_s)}s (queue visible "
                    f"{fmt(run.queue_visible_s, 3)}s, tick start {fmt(run.wait_for_tick_s)}s, "
                    f"tick→write {fmt(run.tick_to_write_s, 3)}s) {run.reason}",
                    file=sys.stderr,
                    flush=True,
                )
                if len(mine) >= 2 and all(r.reaction_s is None for r in mine[-2:]):
                    print(
                        "    two runs in a row without a scale-up: next interval",
                        file=sys.stderr,
                        flush=True,
                    )
                    break
            runs += mine
            summaries.append(summarize(interval_s, mine))
        info["watch_reconnects"] = len(watch.reconnects)
    finally:
        print("==> cleaning up", file=sys.stderr, flush=True)
        if watch is not None:
            await watch.stop()
        if server is not None:
            server.stop()
        if operator is not None:
            with contextlib.suppress(Exception):
                operator.stop()
        if kube is not None:
            await kube.close()
        kubectl.run(
            "delete",
            "namespace",
            NAMESPACE,
            "--ignore-not-found",
            "--timeout=60s",
            timeout=90,
            check=False,
        )
        kubectl.run(
            "delete",
            "clusterrolebinding,clusterrole",
            LEASE_ID,
            "--ignore-not-found",
            timeout=60,
            check=False,
        )
        secrets_dir.cleanup()
        if started_cluster:
            localcluster.down()
    return summaries, runs, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--intervals", default="1,2", help="scrape intervals in seconds")
    parser.add_argument("--runs", type=int, default=5, help="load steps per interval")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="requests in flight after the step (50 ms each on one Triton instance)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "out" / "bench-autoscale",
        help="operator and Triton logs, results.json",
    )
    args = parser.parse_args(argv)
    intervals = [int(x) for x in args.intervals.split(",") if x]
    if not intervals or any(not 1 <= i <= 60 for i in intervals):
        parser.error("--intervals: whole seconds in 1..60")
    if not 1 <= args.runs <= 50 or not 1 <= args.concurrency <= 256:
        parser.error("--runs in 1..50 and --concurrency in 1..256")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (args.out / "operator.log").unlink()
    stop = threading.Event()

    def interrupt(signum: int, _frame: object) -> None:
        print(f"\n==> {signal.Signals(signum).name}: stopping cleanly", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    started = time.monotonic()
    try:
        summaries, runs, info = asyncio.run(
            bench(intervals, args.runs, args.concurrency, args.out, stop)
        )
    except Interrupted:
        print("interrupted: no results", file=sys.stderr)
        return 130
    date = subprocess.run(["date"], capture_output=True, text=True, check=False).stdout.strip()
    header = (
        f"## bench-autoscale {date}\n\n"
        f"`python bench/autoscale_reaction.py --intervals {args.intervals} --runs "
        f"{args.runs} --concurrency {args.concurrency}` on {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end, "
        f"took {time.monotonic() - started:.0f}s"
    )
    if info.get("other_operators"):
        header += (
            f"; {info['other_operators']} other operator process(es) were running on this machine"
        )
    text = markdown(summaries, runs, args.concurrency, header)
    print(text)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "date": date,
                "cpus": os.cpu_count(),
                "info": info,
                "summaries": [asdict(s) for s in summaries],
                "runs": [asdict(r) for r in runs],
            },
            indent=2,
        )
    )
    (args.out / "results.md").write_text(text + "\n")
    return 0 if summaries and all(s.passed for s in summaries) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
