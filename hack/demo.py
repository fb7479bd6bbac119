"""`make demo`: the whole loop on one machine, no GPU needed.

1. Start the local cluster (compiled once and cached): the control plane, fake
   H100/A100 pools, and a real node (kubelet, containerd, runc) with fake GPUs.
2. Install the CRDs, then the operator as users do: `helm install` of
   charts/turnpike with the operator image built from the repository's
   Dockerfile, two pods on the real node under Pod Security `restricted`.
3. Apply a queue-autoscaled ModelDeployment for the real node's GPU product. The
   kubelet starts its pods from exactly what the operator rendered: the local
   CPU Triton image, with the model repository fetched by the rendered
   download init container from a local HTTP server on the node's bridge.
4. Send a bounded load ramp (up, plateau, burst, down) through the
   ModelDeployment's Service and show queue depth, replicas and every scaling
   decision live: the in-cluster operator reads the queue from each pod's
   Triton metrics over the pod network.
5. Write a summary and a PNG timeline, then stop everything (Ctrl-C too);
   `--keep` leaves the cluster up to explore with kubectl.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO)]

from hack import chart_operator, loadgen, localcluster, netrule, realnode  # noqa: E402
from hack.chart_operator import ChartOperator  # noqa: E402
from hack.kubectl import Kubectl, KubectlError  # noqa: E402
from hack.modelserver import ModelServer  # noqa: E402

NAMESPACE = "turnpike-demo"
NAME = "demo-llm"
SELECTOR = f"turnpike.dev/model-deployment={NAME}"


@dataclass(frozen=True)
class Plan:
    """Load phases (seconds, concurrent requests) and autoscaling windows."""

    phases: tuple[tuple[str, float, int], ...]
    stabilization_s: int
    scale_down_period_s: int
    target: float = 4.0
    max_replicas: int = 6
    # After the load ends, keep watching (at most this long) until the fleet has
    # scaled down once: Tritons of late replicas start one by one on a busy
    # machine, and the policy never scales down on a partial reading.
    settle_s: float = 90.0


FULL = Plan(
    phases=(("warm-up", 20, 2), ("ramp", 30, 12), ("plateau", 40, 24), ("burst", 20, 48),
            ("cool-down", 80, 1)),
    stabilization_s=30,
    scale_down_period_s=15,
)
QUICK = Plan(
    phases=(("ramp", 10, 8), ("burst", 25, 40), ("cool-down", 45, 0)),
    stabilization_s=10,
    scale_down_period_s=5,
)


def model_deployment(plan: Plan, uri: str, image: str, product: str) -> dict[str, Any]:
    return {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            # hack/triton/model_repository as a tarball: the "sleepy" model
            # answers after 50 ms on one instance, so requests queue.
            "model": {"uri": uri, "backend": "python", "name": "sleepy"},
            "gpu": {"product": product},
            "runtime": {"image": image, "shmSize": "64Mi"},
            "minReplicas": 1,
            "maxReplicas": plan.max_replicas,
            "autoscaling": {
                "enabled": True,
                "target": plan.target,
                "scrapeIntervalSeconds": 1,
                "panicWindowSeconds": 4,
                "stabilizationWindowSeconds": plan.stabilization_s,
                "scaleDownPeriodSeconds": plan.scale_down_period_s,
            },
        },
    }


@dataclass
class Point:
    t: float
    phase: str
    concurrency: int
    queue: float | None
    desired: int
    ready: int
    tritons: int


@dataclass
class Timeline:
    points: list[Point] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


def metric(samples: dict[str, float], name: str) -> float | None:
    for key, value in samples.items():
        if key.startswith(name + "{") and f"name={NAME}" in key:
            return value
    return None


def scaling_events(kubectl: Kubectl) -> list[dict[str, Any]]:
    events = kubectl.items("events", "-n", NAMESPACE, "--field-selector",
                           f"involvedObject.name={NAME}")
    out = [{"time": e.get("lastTimestamp") or e.get("eventTime"), "reason": e["reason"],
            "message": e["message"]}
           for e in events if e["reason"] in ("ScaledUp", "ScaledDown")]
    return sorted(out, key=lambda e: str(e["time"]))


class View:
    """The live terminal view: one line per second, decisions as they happen."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.tty = sys.stdout.isatty()

    def header(self) -> None:
        print(f"{'time':>5}  {'phase':<10} {'load':>4}  {'queue/replica':>13}  "
              f"{'desired':>7}  {'ready':>5}  {'pods':>7}")

    def line(self, p: Point) -> None:
        queue = "-" if p.queue is None else f"{p.queue:.1f}"
        bar = "#" * min(40, round(p.queue or 0))
        print(f"{p.t:5.0f}s {p.phase:<10} {p.concurrency:>4}  {queue:>13}  {p.desired:>7}  "
              f"{p.ready:>5}  {p.tritons:>7}  {bar}", flush=True)

    def decisions(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            key = f"{e['time']}{e['message']}"
            if key not in self.seen:
                self.seen.add(key)
                arrow = "▲" if e["reason"] == "ScaledUp" else "▼"
                print(f"       {arrow} {e['reason']}: {e['message']}", flush=True)


def plot(timeline: Timeline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p.t for p in timeline.points]
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(10, 7))
    axes[0].plot(t, [p.concurrency for p in timeline.points], color="tab:gray")
    axes[0].set_ylabel("load\n(in-flight requests)")
    axes[1].plot(t, [p.queue if p.queue is not None else float("nan")
                     for p in timeline.points], color="tab:red")
    axes[1].set_ylabel("Triton queue\nper replica")
    axes[2].step(t, [p.desired for p in timeline.points], where="post", label="desired")
    axes[2].step(t, [p.ready for p in timeline.points], where="post", label="ready")
    axes[2].set_ylabel("replicas")
    axes[2].set_xlabel("seconds since load start")
    axes[2].legend(loc="upper left")
    for point_a, point_b in zip(timeline.points, timeline.points[1:], strict=False):
        if point_b.desired != point_a.desired:
            color = "tab:green" if point_b.desired > point_a.desired else "tab:blue"
            for ax in axes:
                ax.axvline(point_b.t, color=color, alpha=0.3, linestyle="--")
    fig.suptitle("Turnpike demo: queue-depth autoscaling of real Triton pods "
                 "(green: scale-up, blue: scale-down)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(plan: Plan, out: Path, keep: bool, stop: threading.Event) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    was_running = localcluster.running() is not None
    print("==> local cluster (compiled once, cached)", flush=True)
    cluster = localcluster.ensure()
    kubectl = Kubectl(cluster.kubectl(), cluster.kubeconfig)
    operator: ChartOperator | None = None
    server: ModelServer | None = None
    timeline = Timeline()
    load_result: loadgen.LoadResult | None = None
    started_cluster = cluster.bin_dir is not None and not was_running
    try:
        pools = realnode.real_pools(localcluster.load_shape())
        if cluster.bin_dir is None or not pools:
            raise SystemExit("the demo needs the local cluster's real node (unset KUBECONFIG)")
        images = realnode.node_images(localcluster._read_state())
        image = realnode.image_ref(images, "tritonserver-cpu")
        operator_image = realnode.image_ref(images, "turnpike")
        server = ModelServer().start()
        print("==> CRDs, then `helm install` of the operator", flush=True)
        kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        kubectl.run("apply", "--server-side", "--force-conflicts", "-f",
                    str(REPO / "deploy" / "admission"))
        operator = chart_operator.install(
            kubectl, str(cluster.bin_dir / "helm"), operator_image, name="turnpike"
        )
        pods = operator.wait_ready()
        print(f"    operator pods {', '.join(p['metadata']['name'] for p in pods)} Ready in "
              f"{operator.namespace} (image {operator_image})", flush=True)
        kubectl.run("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s",
                    timeout=150)
        kubectl.run("create", "namespace", NAMESPACE)
        print(f"==> ModelDeployment {NAMESPACE}/{NAME} (autoscaled 1..{plan.max_replicas}, "
              f"target {plan.target:g} queued per replica) on the real node {pools[0].node_name}; "
              f"model from {server.tarball_url}", flush=True)
        kubectl.apply(model_deployment(plan, server.tarball_url, image, pools[0].product))
        kubectl.run("wait", "--for=condition=Ready", "--timeout=180s", f"md/{NAME}",
                    "-n", NAMESPACE, timeout=200)
        service_ip = kubectl.get("service", NAME, "-n", NAMESPACE)["spec"]["clusterIP"]
        target = f"{service_ip}:8000"
        print(f"==> Triton pods serving behind the Service {target}; load ramp "
              f"{' → '.join(f'{n} {c}×{d:g}s' for n, d, c in plan.phases)}", flush=True)
        load_result = drive(plan, target, kubectl, operator, timeline, stop)
    finally:
        print("==> stopping", flush=True)
        if operator is not None:
            with contextlib.suppress(Exception):
                (out / "operator.log").write_text(operator.kube.run(
                    "logs", "-l", "app.kubernetes.io/instance=turnpike", "--tail=-1",
                    "--prefix", check=False).stdout)
            operator.uninstall()
        if server is not None:
            server.stop()
        if not keep:
            kubectl.run("delete", "namespace", NAMESPACE, "--wait=false", check=False)
            if started_cluster:
                localcluster.down()
    summary = summarize(plan, timeline, load_result, out)
    if keep:
        print(f"\nThe cluster is still up:\n  export KUBECONFIG={cluster.kubeconfig}\n"
              f"  kubectl get md,deploy,pods -n {NAMESPACE}\n  make cluster-down   # when done")
    return summary


def ready_pods(kubectl: Kubectl) -> int:
    pods = kubectl.items("pods", "-n", NAMESPACE, "-l", SELECTOR)
    return sum(
        1 for p in pods
        if not p["metadata"].get("deletionTimestamp") and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions", []))
    )


def drive(plan: Plan, target: str, kubectl: Kubectl, operator: ChartOperator,
          timeline: Timeline, stop: threading.Event) -> loadgen.LoadResult:
    schedule = [(d, c) for _, d, c in plan.phases]
    boundaries = []
    acc = 0.0
    for name, duration, concurrency in plan.phases:
        boundaries.append((acc, acc + duration, name, concurrency))
        acc += duration
    load_stop = asyncio.Event()
    result: dict[str, loadgen.LoadResult] = {}
    loop = asyncio.new_event_loop()

    def load_thread() -> None:
        # A new connection per request: kube-proxy balances connections, so
        # this is how a client of a plain Service reaches replicas added later.
        result["load"] = loop.run_until_complete(loadgen.run_load(
            [target], schedule, stop=load_stop, max_requests=200_000, keepalive=False))

    thread = threading.Thread(target=load_thread, daemon=True)
    began = time.monotonic()
    thread.start()
    view = View()
    view.header()
    decisions: list[dict[str, Any]] = []

    def observe() -> None:
        t = time.monotonic() - began
        phase = next(((n, c) for a, b, n, c in boundaries if a <= t < b), ("settle", 0))
        try:
            samples = operator.metrics()
        except (OSError, KubectlError):  # a leader change or a slow answer: next second
            samples = {}
        point = Point(t=t, phase=phase[0], concurrency=phase[1],
                      queue=metric(samples, "turnpike_queue_depth"),
                      desired=int(metric(samples, "turnpike_desired_replicas") or 0),
                      ready=int(metric(samples, "turnpike_ready_replicas") or 0),
                      tritons=_quietly(ready_pods, kubectl))
        timeline.points.append(point)
        view.line(point)
        with contextlib.suppress(Exception):
            decisions[:] = scaling_events(kubectl)
            view.decisions(decisions)

    while thread.is_alive():
        observe()
        if stop.is_set():
            loop.call_soon_threadsafe(load_stop.set)
        thread.join(timeout=1.0)
    settle_until = time.monotonic() + plan.settle_s
    while (not stop.is_set() and time.monotonic() < settle_until
           and not any(d["reason"] == "ScaledDown" for d in decisions)):
        observe()
        stop.wait(1.0)
    with contextlib.suppress(Exception):
        timeline.decisions = scaling_events(kubectl)
        view.decisions(timeline.decisions)
    loop.close()
    return result["load"]


def _quietly(probe: Any, kubectl: Kubectl) -> int:
    try:
        return int(probe(kubectl))
    except Exception:  # a slow API answer must not end the demo; the next second retries
        return 0


def summarize(plan: Plan, timeline: Timeline, load: loadgen.LoadResult | None,
              out: Path) -> dict[str, Any]:
    ups = [d for d in timeline.decisions if d["reason"] == "ScaledUp"]
    downs = [d for d in timeline.decisions if d["reason"] == "ScaledDown"]
    png = out / "demo-timeline.png"
    if timeline.points:
        plot(timeline, png)
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "scale_ups": len(ups),
        "scale_downs": len(downs),
        "max_desired": max((p.desired for p in timeline.points), default=0),
        "max_queue_per_replica": max((p.queue or 0 for p in timeline.points), default=0),
        "decisions": timeline.decisions,
        "png": str(png) if png.exists() else None,
        "load": [asdict(p) | {"latencies_ms": None} for p in (load.phases if load else ())],
        "timeline": [asdict(p) for p in timeline.points],
    }
    (out / "demo-summary.json").write_text(json.dumps(summary, indent=2))
    print("\n==> summary")
    print(f"  scale-ups: {len(ups)}, scale-downs: {len(downs)}, "
          f"peak replicas asked: {summary['max_desired']}, "
          f"peak queue per replica: {summary['max_queue_per_replica']:.1f}")
    for phase in load.phases if load else ():
        p50 = f"{phase.p50_ms:.0f}" if phase.p50_ms is not None else "-"
        p99 = f"{phase.p99_ms:.0f}" if phase.p99_ms is not None else "-"
        print(f"  load phase {phase.index} ×{phase.concurrency}: {phase.ok} ok, "
              f"{phase.failed} failed, p50 {p50} ms, p99 {p99} ms")
    print(f"  timeline: {png}\n  summary:  {out / 'demo-summary.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter ramp (the e2e test)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "demo")
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_PROXY", netrule.no_proxy())
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    stop = threading.Event()

    def interrupt(signum: int, _frame: object) -> None:
        print(f"\n==> {signal.Signals(signum).name}: stopping cleanly", flush=True)
        stop.set()

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    started = time.monotonic()
    summary = run_demo(QUICK if args.quick else FULL, args.out, args.keep, stop)
    print(f"  took {time.monotonic() - started:.0f}s")
    ok = summary["scale_ups"] >= 1 and summary["scale_downs"] >= 1 and summary["png"]
    return 0 if ok or stop.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
