"""`make bench-reconcile`: how fast the operator turns ModelDeployments into fleets.

For each size N (``--sizes``, default 100 and 1,000) it creates N
ModelDeployments at once and measures, per object, the time from create to its
Deployment existing and to Ready=True, plus the operator's RSS (at the end and
the peak sampled while the size ran) and CPU. In the same run it creates N
plain Deployments (0 replicas) and measures kube-controller-manager's
Deployment -> ReplicaSet latency, the native reference the ratio is taken
against. Extra fake GPU nodes are added so every replica can schedule, and
everything is removed at the end. Prints a markdown table; numbers, never
assertions.

With ``--tiers`` every size first gets a CapacityTier of its own
(``bench-reserved-N``, class reserved, admitting only the size's namespace, with
a budget of N + 10% GPUs of the bench product), and every ModelDeployment names
it in ``spec.tier`` and turns autoscaling on (minReplicas 1, maxReplicas 2).
The fake kwok pods serve no Triton metrics, so the autoscaler holds at one
replica; what this measures is the fleet when every reconcile runs the capacity
gate and the autoscaler tick. The table then also reports the operator's
capacity-evaluation cost from its ``turnpike_capacity_evaluation_seconds``
histogram (mean = Δsum / Δcount over create -> all Ready, and Δcount); ``n/a``
when the operator does not export it. Cleanup deletes the ModelDeployments (with
their namespace) first and the tier after them, since the operator releases the
tier's finalizer only once no ModelDeployment uses it.

`make bench-reconcile` runs the plain mode at 100 and 1,000 and the tier mode at
100, 1,000 and 5,000. How long the 5,000 size takes is not known yet (it has not
been run); every wait is bounded and scales with N, and ``--timeout`` overrides
the per-size measurement limit (default max(900 s, 0.5 s x N)).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO)]

from hack import localcluster  # noqa: E402
from hack.kubectl import Kubectl  # noqa: E402
from hack.operator_process import OperatorProcess, start_operator  # noqa: E402
from turnpike.kube import ApiError, Kube, connect  # noqa: E402
from turnpike.kube.resources import (  # noqa: E402
    CAPACITY_TIER,
    DEPLOYMENT,
    MODEL_DEPLOYMENT,
    Resource,
)

REPLICASET = Resource("apps/v1", "ReplicaSet", "replicasets")
BENCH_PRODUCT = "NVIDIA-H100-80GB-HBM3"
BENCH_LABEL = ("turnpike.dev/bench", "reconcile")
EVALUATION_METRIC = "turnpike_capacity_evaluation_seconds"
TIER_HEADROOM = 1.1  # the tier's GPU budget: N replicas + 10%
# Fake bench nodes take indexes 100.. in node_manifests, which become the third
# octet of their podCIDR (127.64.I.0/24) and the last of their InternalIP
# (127.0.1.I); 255 and 254 belong to kwok itself, so at most 150 bench nodes.
FIRST_NODE_INDEX = 100
MAX_BENCH_NODES = 150
MAX_GPUS_PER_NODE = 104  # below the fake nodes' 110-pod capacity; each replica is 1 GPU, 1 pod


@dataclass
class Sample:
    created: dict[str, float]
    seen: dict[str, float]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latencies(sample: Sample) -> list[float]:
    return [sample.seen[n] - sample.created[n] for n in sample.created if n in sample.seen]


def scaled(n: int, base: float, per_object: float) -> float:
    """A wait that grows with the fleet: at least base seconds, per_object x N above."""
    return max(base, per_object * n)


def tier_name(n: int) -> str:
    return f"bench-reserved-{n}"


def tier_budget(n: int) -> int:
    return math.ceil(n * TIER_HEADROOM)


def model_deployment(name: str, tier: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "s3://bench/model", "backend": "python"},
        "gpu": {"product": BENCH_PRODUCT},
    }
    if tier is not None:
        spec.update(
            {
                "tier": tier,
                "minReplicas": 1,
                "maxReplicas": 2,
                "autoscaling": {"enabled": True},
            }
        )
    return {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def capacity_tier(name: str, namespace: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "CapacityTier",
        "metadata": {"name": name, "labels": {BENCH_LABEL[0]: BENCH_LABEL[1]}},
        "spec": {
            "class": "reserved",
            "gpuBudget": {BENCH_PRODUCT: gpus},
            "namespaces": [namespace],
        },
    }


def plain_deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "bench.invalid/x"}]},
            },
        },
    }


async def create_all(
    kube: Kube, namespace: str, objects: list[dict[str, Any]], concurrency: int = 16
) -> dict[str, float]:
    created: dict[str, float] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one(obj: dict[str, Any]) -> None:
        obj["metadata"]["namespace"] = namespace
        async with gate:
            await kube.create(obj)
            created[obj["metadata"]["name"]] = time.monotonic()

    await asyncio.gather(*(one(o) for o in objects))
    return created


async def watch_until(
    kube: Kube, resource: Resource, namespace: str, expected: int, key: Any, deadline: float
) -> dict[str, float]:
    """Time each object first satisfies key(obj) -> name | None, until expected are seen."""
    seen: dict[str, float] = {}
    while len(seen) < expected and time.monotonic() < deadline:
        remaining = max(1, int(deadline - time.monotonic()))
        try:
            async for _type, obj in kube.watch(
                resource, namespace, timeout_seconds=min(remaining, 300)
            ):
                name = key(obj)
                if name is not None and name not in seen:
                    seen[name] = time.monotonic()
                    if len(seen) >= expected:
                        break
        except (TimeoutError, OSError):
            continue
    return seen


def owner_name(obj: dict[str, Any]) -> str | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return str(refs[0]["name"]) if refs else None


def ready_name(obj: dict[str, Any]) -> str | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == "Ready" and c["status"] == "True":
            return str(obj["metadata"]["name"])
    return None


def proc_usage(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kib / 1024, (int(fields[11]) + int(fields[12])) / ticks


async def sample_peak_rss(pid: int, peak: list[float], interval: float = 0.25) -> None:
    """Keep peak[0] at the highest RSS (MiB) seen until cancelled."""
    while True:
        try:
            peak[0] = max(peak[0], proc_usage(pid)[0])
        except OSError:
            return  # the operator exited; the run reports what it saw
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class Counts:
    reconciles: float  # ModelDeployment reconciles
    writes: float  # API write requests
    evaluation_sum: float | None  # seconds spent in capacity evaluations; None: not exported
    evaluation_count: float | None


def operator_counts(operator: OperatorProcess) -> Counts:
    """What the operator did so far, from its /metrics."""
    samples = operator.metrics()
    reconciles = sum(
        v
        for k, v in samples.items()
        if k.startswith("turnpike_reconcile_total{") and "kind=ModelDeployment" in k
    )
    writes = sum(v for k, v in samples.items() if k.startswith("turnpike_api_writes_total{"))
    sums = [v for k, v in samples.items() if k.startswith(EVALUATION_METRIC + "_sum{")]
    counts = [v for k, v in samples.items() if k.startswith(EVALUATION_METRIC + "_count{")]
    # A labelled histogram has no samples before its first observation.
    return Counts(reconciles, writes, sum(sums) if sums else None, sum(counts) if counts else None)


def evaluation_delta(before: Counts, after: Counts) -> tuple[float, float]:
    """(mean seconds per evaluation, evaluations) between two scrapes; NaN when the
    histogram has no samples after the run (not exported, or nothing evaluated)."""
    if after.evaluation_sum is None or after.evaluation_count is None:
        return float("nan"), float("nan")
    count = after.evaluation_count - (before.evaluation_count or 0.0)
    spent = after.evaluation_sum - (before.evaluation_sum or 0.0)
    return (spent / count if count > 0 else float("nan")), count


async def wait_tier_seen(kube: Kube, name: str, timeout: float) -> None:
    """Until the operator has reconciled the new tier (its status is written), bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = await kube.get(CAPACITY_TIER, None, name)
        if body is not None and body.get("status", {}).get("budget"):
            return
        await asyncio.sleep(0.2)
    print(
        f"bench-reconcile: CapacityTier {name} has no status after {timeout:.0f}s; "
        "measuring anyway",
        file=sys.stderr,
        flush=True,
    )


async def remove_tier(kube: Kube, name: str, timeout: float) -> bool:
    """Delete a CapacityTier whose ModelDeployments are already gone; True once it is.

    The API server refuses the delete while the tier's status still lists
    consumers (the operator's admission policy), and the tier lingers until the
    operator drops its finalizer; both follow the deletions with a lag, so the
    delete is retried and the disappearance awaited, each within timeout.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            body = await kube.get(CAPACITY_TIER, None, name)
            if body is None:
                return True
            if not body["metadata"].get("deletionTimestamp"):
                await kube.delete(CAPACITY_TIER, None, name)
        except (ApiError, OSError, TimeoutError) as error:
            last_error = str(error)  # still listed as in use, or a slow answer: try again
        await asyncio.sleep(1.0)
    print(
        f"bench-reconcile: CapacityTier {name} still exists after {timeout:.0f}s"
        + (f" ({last_error})" if last_error else "")
        + f"; remove it with `kubectl delete capacitytier {name}`",
        file=sys.stderr,
        flush=True,
    )
    return False


async def run_size(
    kube: Kube,
    kubectl: Kubectl,
    operator: OperatorProcess,
    n: int,
    timeout: float,
    tiers: bool,
) -> dict[str, float]:
    md_ns, native_ns = f"bench-md-{n}", f"bench-native-{n}"
    ns_timeout = int(scaled(n, 300, 0.1))
    for ns in (md_ns, native_ns):
        kubectl.run(
            "delete",
            "namespace",
            ns,
            "--ignore-not-found",
            f"--timeout={ns_timeout}s",
            timeout=ns_timeout + 20,
        )
        kubectl.run("create", "namespace", ns)
    tier = tier_name(n) if tiers else None
    if tier is not None:
        # A tier left by an aborted run (its namespace is gone now): replace it.
        if not await remove_tier(kube, tier, scaled(n, 180, 0.05)):
            raise RuntimeError(f"CapacityTier {tier} from an earlier run could not be removed")
        await kube.create(capacity_tier(tier, md_ns, tier_budget(n)))
        await wait_tier_seen(kube, tier, 60)
    pid = operator.process.pid
    rss_before, cpu_before = proc_usage(pid)
    peak = [rss_before]
    sampler = asyncio.create_task(sample_peak_rss(pid, peak))
    counts_before = operator_counts(operator)
    wall = time.monotonic()
    deadline = time.monotonic() + timeout
    names = [f"md-{i:04d}" for i in range(n)]

    deployments = asyncio.create_task(watch_until(kube, DEPLOYMENT, md_ns, n, owner_name, deadline))
    ready = asyncio.create_task(watch_until(kube, MODEL_DEPLOYMENT, md_ns, n, ready_name, deadline))
    await asyncio.sleep(0.5)  # let both watches open before the first create
    created = await create_all(kube, md_ns, [model_deployment(x, tier) for x in names])
    to_deployment = latencies(Sample(created, await deployments))
    to_ready = latencies(Sample(created, await ready))
    elapsed = time.monotonic() - wall
    rss_after, cpu_after = proc_usage(pid)
    counts_after = operator_counts(operator)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    peak[0] = max(peak[0], rss_after)
    reconciles = (counts_after.reconciles - counts_before.reconciles) / n
    writes = (counts_after.writes - counts_before.writes) / n
    evaluation_mean, evaluations = evaluation_delta(counts_before, counts_after)
    if tier is not None:
        items = await kube.list(MODEL_DEPLOYMENT, md_ns)
        off_tier = sum(1 for o in items if o.get("status", {}).get("tier") != tier)
        if off_tier:
            print(
                f"bench-reconcile: {off_tier} of {len(items)} ModelDeployments do not report "
                f"status.tier={tier}",
                file=sys.stderr,
                flush=True,
            )

    native_names = [f"native-{i:04d}" for i in range(n)]
    replicasets = asyncio.create_task(
        watch_until(kube, REPLICASET, native_ns, n, owner_name, time.monotonic() + timeout)
    )
    await asyncio.sleep(0.5)
    native_created = await create_all(kube, native_ns, [plain_deployment(x) for x in native_names])
    to_replicaset = latencies(Sample(native_created, await replicasets))

    p50_native = percentile(to_replicaset, 50)
    return {
        "n": n,
        "deployment_seen": len(to_deployment),
        "ready_seen": len(to_ready),
        "deploy_p50": percentile(to_deployment, 50),
        "deploy_p99": percentile(to_deployment, 99),
        "ready_p50": percentile(to_ready, 50),
        "ready_p99": percentile(to_ready, 99),
        "native_p50": p50_native,
        "native_p99": percentile(to_replicaset, 99),
        "ratio_p50": percentile(to_deployment, 50) / p50_native if p50_native else float("nan"),
        "rss_mib": rss_after,
        "rss_growth_mib": rss_after - rss_before,
        "rss_peak_mib": peak[0],
        "cpu_s": cpu_after - cpu_before,
        "reconciles_per_object": reconciles,
        "writes_per_object": writes,
        "evaluation_mean_s": evaluation_mean,
        "evaluations": evaluations,
        "wall_s": elapsed,
    }


async def cleanup_size(kube: Kube, kubectl: Kubectl, n: int, tiers: bool) -> None:
    """Wait (bounded) for the size's namespaces to go, ModelDeployments with them,
    then remove its tier, whose finalizer the operator drops once they are gone."""
    ns_timeout = int(scaled(n, 300, 0.1))
    kubectl.run(
        "wait",
        "--for=delete",
        "namespace",
        f"bench-md-{n}",
        f"bench-native-{n}",
        f"--timeout={ns_timeout}s",
        timeout=ns_timeout + 20,
        check=False,
    )
    if tiers:
        await remove_tier(kube, tier_name(n), scaled(n, 180, 0.05))


def bench_node_shape(gpus_needed: int) -> tuple[int, int]:
    """(nodes, GPUs per node): 8-GPU nodes while they fit in MAX_BENCH_NODES, else
    denser fake nodes (a multiple of 8 GPUs) so the count stays within it."""
    gpus_per_node = 8
    if gpus_needed // gpus_per_node + 1 > MAX_BENCH_NODES:
        gpus_per_node = 8 * math.ceil(math.ceil(gpus_needed / (MAX_BENCH_NODES - 1)) / 8)
    if gpus_per_node > MAX_GPUS_PER_NODE:
        raise ValueError(
            f"{gpus_needed} GPUs need more than {MAX_BENCH_NODES} fake nodes of "
            f"{MAX_GPUS_PER_NODE} GPUs; use smaller sizes"
        )
    return gpus_needed // gpus_per_node + 1, gpus_per_node


def add_bench_nodes(cluster: localcluster.Cluster, gpus_needed: int) -> list[str]:
    nodes_needed, gpus_per_node = bench_node_shape(gpus_needed)
    shape = {
        "pools": [
            {
                "name": "bench",
                "count": nodes_needed,
                "gpus": gpus_per_node,
                "product": BENCH_PRODUCT,
                "family": "hopper",
                "memoryMiB": 81559,
                "cpu": "192",
                "memory": "2Ti",
            }
        ]
    }
    nodes = localcluster.node_manifests(shape, first_index=FIRST_NODE_INDEX)
    kubectl = Kubectl(cluster.kubectl(), cluster.kubeconfig)
    # Bench nodes an earlier run left (perhaps of another size) would keep their
    # old capacity: `kubectl create` does not replace them.
    kubectl.run(
        "delete",
        "node",
        "-l",
        "turnpike.dev/pool=bench",
        "--ignore-not-found",
        "--timeout=120s",
        timeout=150,
        check=False,
    )
    kubectl.create(*nodes)
    names = [n["metadata"]["name"] for n in nodes]
    kubectl.run(
        "wait",
        "--for=condition=Ready",
        "--timeout=120s",
        *(f"node/{n}" for n in names),
        timeout=180,
    )
    print(
        f"bench-reconcile: {len(names)} fake nodes of {gpus_per_node} x {BENCH_PRODUCT}",
        file=sys.stderr,
        flush=True,
    )
    return names


async def main_async(
    sizes: list[int], timeout: float | None, tiers: bool
) -> list[dict[str, float]]:
    # A SIGTERM (timeout, kill) cancels the run, so the finally blocks below still
    # remove the namespaces and the tier while the operator runs, then stop it.
    main_task = asyncio.current_task()
    if main_task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    cluster = localcluster.ensure()
    kubectl = Kubectl(cluster.kubectl(), cluster.kubeconfig)
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    gpus_needed = tier_budget(max(sizes)) if tiers else max(sizes)
    bench_nodes = add_bench_nodes(cluster, gpus_needed) if cluster.bin_dir else []
    log_path = Path(tempfile.mkdtemp(prefix="bench-reconcile-")) / "operator.log"
    operator = start_operator(cluster.kubeconfig, log_path, "--log-level=warning")
    kube = await connect(str(cluster.kubeconfig))
    results = []
    try:
        for n in sizes:
            mode = "with a CapacityTier and autoscaling" if tiers else "plain"
            print(f"bench-reconcile: {n} ModelDeployments, {mode} ...", file=sys.stderr, flush=True)
            size_timeout = timeout if timeout is not None else scaled(n, 900, 0.5)
            try:
                results.append(await run_size(kube, kubectl, operator, n, size_timeout, tiers))
            finally:
                # Also after a failure: the tier must go while the operator still
                # runs, since only it removes the tier's finalizer.
                for ns in (f"bench-md-{n}", f"bench-native-{n}"):
                    kubectl.run(
                        "delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False
                    )
                await cleanup_size(kube, kubectl, n, tiers)
    finally:
        operator.stop()
        await kube.close()
        if bench_nodes:
            kubectl.run(
                "delete",
                "node",
                *bench_nodes,
                "--ignore-not-found",
                "--timeout=120s",
                timeout=150,
                check=False,
            )
    print(f"bench-reconcile: operator log {log_path}", file=sys.stderr, flush=True)
    return results


def fmt(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def table(results: list[dict[str, float]]) -> str:
    header = (
        "| N | create→Deployment p50 / p99 (s) | create→Ready p50 / p99 (s) "
        "| native Deployment→ReplicaSet p50 / p99 (s) | ratio p50 | operator RSS (MiB) "
        "| peak RSS (MiB) | operator CPU (s) | reconciles / object | writes / object "
        "| tier evaluation mean (ms) | tier evaluations | wall (s) |"
    )
    columns = 13
    lines = [header, "|" + "---|" * columns]
    for r in results:
        lines.append(
            f"| {int(r['n'])} | {r['deploy_p50']:.2f} / {r['deploy_p99']:.2f} "
            f"| {r['ready_p50']:.2f} / {r['ready_p99']:.2f} "
            f"| {r['native_p50']:.3f} / {r['native_p99']:.3f} | {r['ratio_p50']:.1f}x "
            f"| {r['rss_mib']:.0f} (+{r['rss_growth_mib']:.0f}) | {r['rss_peak_mib']:.0f} "
            f"| {r['cpu_s']:.1f} "
            f"| {r['reconciles_per_object']:.1f} | {r['writes_per_object']:.1f} "
            f"| {fmt(r['evaluation_mean_s'] * 1000, '.3f')} | {fmt(r['evaluations'], '.0f')} "
            f"| {r['wall_s']:.1f} |"
        )
        missing = int(r["n"] - min(r["deployment_seen"], r["ready_seen"]))
        if missing:
            lines.append(
                f"| | {missing} objects did not finish before the timeout" + " |" * (columns - 1)
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="comma-separated, e.g. 100,1000,5000")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per size to reach Deployment and Ready (default max(900, 0.5 x N))",
    )
    parser.add_argument(
        "--tiers",
        action="store_true",
        help="each size gets a CapacityTier that every ModelDeployment uses, with autoscaling on",
    )
    args = parser.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        parser.error("--sizes: positive integers, comma-separated")
    try:  # before touching the cluster
        bench_node_shape(tier_budget(max(sizes)) if args.tiers else max(sizes))
    except ValueError as error:
        parser.error(str(error))
    results = asyncio.run(main_async(sizes, args.timeout, args.tiers))
    mode = "CapacityTier + autoscaling" if args.tiers else "plain"
    print(f"\nbench-reconcile {time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs), {mode}\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
