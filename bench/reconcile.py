"""`make bench-reconcile`: how fast the operator turns ModelDeployments into fleets.

For each size N (default 100 and 1,000) it creates N ModelDeployments at once
and measures, per object, the time from create to its Deployment existing and
to Ready=True, plus the operator's RSS and CPU. In the same run it creates N
plain Deployments (0 replicas) and measures kube-controller-manager's
Deployment -> ReplicaSet latency, the native reference the ratio is taken
against. Extra fake GPU nodes are added so every replica can schedule, and
everything is removed at the end. Prints a markdown table; numbers, never
assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from turnpike.kube import Kube, connect  # noqa: E402
from turnpike.kube.resources import DEPLOYMENT, MODEL_DEPLOYMENT, Resource  # noqa: E402

REPLICASET = Resource("apps/v1", "ReplicaSet", "replicasets")
BENCH_PRODUCT = "NVIDIA-H100-80GB-HBM3"


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


def model_deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "s3://bench/model", "backend": "python"},
            "gpu": {"product": BENCH_PRODUCT},
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


def operator_counts(operator: OperatorProcess) -> tuple[float, float]:
    """(ModelDeployment reconciles, API write requests) the operator made so far."""
    samples = operator.metrics()
    reconciles = sum(
        v
        for k, v in samples.items()
        if k.startswith("turnpike_reconcile_total{") and "kind=ModelDeployment" in k
    )
    writes = sum(v for k, v in samples.items() if k.startswith("turnpike_api_writes_total{"))
    return reconciles, writes


async def run_size(
    kube: Kube, kubectl: Kubectl, operator: OperatorProcess, n: int, timeout: float
) -> dict[str, float]:
    md_ns, native_ns = f"bench-md-{n}", f"bench-native-{n}"
    for ns in (md_ns, native_ns):
        kubectl.run("delete", "namespace", ns, "--ignore-not-found", "--timeout=300s", timeout=320)
        kubectl.run("create", "namespace", ns)
    pid = operator.process.pid
    rss_before, cpu_before = proc_usage(pid)
    counts_before = operator_counts(operator)
    wall = time.monotonic()
    deadline = time.monotonic() + timeout
    names = [f"md-{i:04d}" for i in range(n)]

    deployments = asyncio.create_task(watch_until(kube, DEPLOYMENT, md_ns, n, owner_name, deadline))
    ready = asyncio.create_task(watch_until(kube, MODEL_DEPLOYMENT, md_ns, n, ready_name, deadline))
    await asyncio.sleep(0.5)  # let both watches open before the first create
    created = await create_all(kube, md_ns, [model_deployment(x) for x in names])
    to_deployment = latencies(Sample(created, await deployments))
    to_ready = latencies(Sample(created, await ready))
    elapsed = time.monotonic() - wall
    rss_after, cpu_after = proc_usage(pid)
    reconciles, writes = (
        (after - before) / n
        for before, after in zip(counts_before, operator_counts(operator), strict=True)
    )

    native_names = [f"native-{i:04d}" for i in range(n)]
    replicasets = asyncio.create_task(
        watch_until(kube, REPLICASET, native_ns, n, owner_name, time.monotonic() + timeout)
    )
    await asyncio.sleep(0.5)
    native_created = await create_all(kube, native_ns, [plain_deployment(x) for x in native_names])
    to_replicaset = latencies(Sample(native_created, await replicasets))

    for ns in (md_ns, native_ns):
        kubectl.run("delete", "namespace", ns, "--wait=false")
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
        "cpu_s": cpu_after - cpu_before,
        "reconciles_per_object": reconciles,
        "writes_per_object": writes,
        "wall_s": elapsed,
    }


def add_bench_nodes(cluster: localcluster.Cluster, gpus_needed: int) -> list[str]:
    nodes_needed = gpus_needed // 8 + 1
    shape = {
        "pools": [
            {
                "name": "bench",
                "count": nodes_needed,
                "gpus": 8,
                "product": BENCH_PRODUCT,
                "family": "hopper",
                "memoryMiB": 81559,
                "cpu": "192",
                "memory": "2Ti",
            }
        ]
    }
    nodes = localcluster.node_manifests(shape, first_index=100)
    kubectl = Kubectl(cluster.kubectl(), cluster.kubeconfig)
    kubectl.create(*nodes)
    names = [n["metadata"]["name"] for n in nodes]
    kubectl.run(
        "wait",
        "--for=condition=Ready",
        "--timeout=120s",
        *(f"node/{n}" for n in names),
        timeout=180,
    )
    return names


async def main_async(sizes: list[int], timeout: float) -> list[dict[str, float]]:
    cluster = localcluster.ensure()
    kubectl = Kubectl(cluster.kubectl(), cluster.kubeconfig)
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    bench_nodes = add_bench_nodes(cluster, max(sizes)) if cluster.bin_dir else []
    log_path = Path(tempfile.mkdtemp(prefix="bench-reconcile-")) / "operator.log"
    operator = start_operator(cluster.kubeconfig, log_path, "--log-level=warning")
    kube = await connect(str(cluster.kubeconfig))
    results = []
    try:
        for n in sizes:
            print(f"bench-reconcile: {n} ModelDeployments ...", file=sys.stderr, flush=True)
            results.append(await run_size(kube, kubectl, operator, n, timeout))
            kubectl.run(
                "wait",
                "--for=delete",
                "namespace",
                f"bench-md-{n}",
                f"bench-native-{n}",
                "--timeout=300s",
                timeout=320,
                check=False,
            )
    finally:
        operator.stop()
        await kube.close()
        if bench_nodes:
            kubectl.run("delete", "node", *bench_nodes, "--wait=false", check=False)
    return results


def table(results: list[dict[str, float]]) -> str:
    header = (
        "| N | create→Deployment p50 / p99 (s) | create→Ready p50 / p99 (s) "
        "| native Deployment→ReplicaSet p50 / p99 (s) | ratio p50 | operator RSS (MiB) "
        "| operator CPU (s) | reconciles / object | writes / object | wall (s) |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in results:
        lines.append(
            f"| {int(r['n'])} | {r['deploy_p50']:.2f} / {r['deploy_p99']:.2f} "
            f"| {r['ready_p50']:.2f} / {r['ready_p99']:.2f} "
            f"| {r['native_p50']:.3f} / {r['native_p99']:.3f} | {r['ratio_p50']:.1f}x "
            f"| {r['rss_mib']:.0f} (+{r['rss_growth_mib']:.0f}) | {r['cpu_s']:.1f} "
            f"| {r['reconciles_per_object']:.1f} | {r['writes_per_object']:.1f} "
            f"| {r['wall_s']:.1f} |"
        )
        missing = int(r["n"] - min(r["deployment_seen"], r["ready_seen"]))
        if missing:
            lines.append(f"| | {missing} objects did not finish before the timeout" + " |" * 9)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per size")
    args = parser.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    sizes = [int(s) for s in args.sizes.split(",")]
    results = asyncio.run(main_async(sizes, args.timeout))
    print(f"\nbench-reconcile {time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs)\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
