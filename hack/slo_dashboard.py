"""`make slo-dashboard`: the dashboard's SLO and GPU-meter panels, rendered from a real run.

1. On the local cluster (started or reused), run the operator as a process and a
   real Prometheus on 127.0.0.1 scraping its /metrics every second.
2. A reserved CapacityTier with a price and a budget of 1 GPU of the real node's
   product, and a ModelDeployment with an SLO (request latency within 120 ms
   for 50 % of requests over 5 minutes) whose only scaling signal is the SLO.
3. A bounded load through its Service: 1 client (~50 ms, good), then 3
   clients (~150 ms on one replica: the SLO burns and the budget binds), then the
   tier's budget is raised to 3 GPUs and the autoscaler adds a replica, then idle.
4. Every panel of the "SLOs and the GPU meter" row of
   deploy/grafana/turnpike-dashboard.json is queried over the run with its own
   PromQL (``$__rate_interval`` → 10s, 24h windows as written) and drawn into
   one PNG (default docs/slo-dashboard.png). Everything it created is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO)]

from hack import loadgen, localcluster, netrule  # noqa: E402
from hack.kubectl import Kubectl, eventually  # noqa: E402
from hack.operator_process import start_operator  # noqa: E402
from hack.prometheus import PrometheusServer, ScrapeTarget  # noqa: E402
from tests.realpods import (  # noqa: E402
    REAL_PRODUCT,
    local_volume,
    slo_scaled_md,
    wait_real_node_idle,
)

DASHBOARD = REPO / "deploy" / "grafana" / "turnpike-dashboard.json"
ROW = "SLOs and the GPU meter"
NAME = "meter-demo"
PHASES = ((40, 1), (70, 3))  # (seconds, clients) before the budget is raised
AFTER_RAISE_S = 80


def panels() -> list[dict[str, Any]]:
    """The panels of the dashboard's SLO row, in order."""
    every = json.loads(DASHBOARD.read_text())["panels"]
    start = next(i for i, p in enumerate(every) if p["type"] == "row" and p["title"] == ROW)
    out = []
    for panel in every[start + 1 :]:
        if panel["type"] == "row":
            break
        out.append(panel)
    return out


def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    expr = expr.replace("$__rate_interval", "10s")
    expr = re.sub(r'\{namespace=~"\$namespace"\}', "", expr)
    expr = expr.replace('namespace=~"$namespace"', "")
    form = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 2})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}/api/v1/query_range?{form}", timeout=30) as response:
        payload = json.load(response)
    if payload.get("status") != "success":
        raise RuntimeError(f"{expr}: {payload}")
    return list(payload["data"]["result"])


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda m: labels.get(m.group(1), ""), template)


def plot(url: str, start: float, end: float, marks: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = panels()
    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), sharex=True)
    for ax, panel in zip(axes, chosen, strict=True):
        for target in panel["targets"]:
            for series in query_range(url, target["expr"], start, end):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(target["legendFormat"], series["metric"]))
        for what, at in marks.items():
            ax.axvline(at - start, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                what,
                (at - start, 1),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                va="top",
                ha="left",
                color="grey",
            )
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds into the run")
    fig.suptitle(
        f'deploy/grafana/turnpike-dashboard.json, row "{ROW}": real run of '
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(start))}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def run(out: Path) -> int:
    cluster = localcluster.ensure()
    kubectl = Kubectl(cluster.kubectl(), cluster.kubeconfig)
    namespace = f"slo-dashboard-{uuid.uuid4().hex[:5]}"
    tier = f"slo-demo-{uuid.uuid4().hex[:5]}"
    kubectl.run("create", "namespace", namespace)
    kube = kubectl.in_namespace(namespace)
    workdir = Path(tempfile.mkdtemp(prefix="slo-dashboard-"))
    operator = start_operator(cluster.kubeconfig, workdir / "operator.log", "--resync-seconds=5")
    try:
        address = operator.metrics_url.removeprefix("http://").removesuffix("/metrics")
        assert netrule.allowed(address.rpartition(":")[0])
        with PrometheusServer([ScrapeTarget(address)], scrape_interval_s=1) as prom:
            wait_real_node_idle(kubectl)
            kubectl.apply(
                {
                    "apiVersion": "turnpike.dev/v1alpha1",
                    "kind": "CapacityTier",
                    "metadata": {"name": tier},
                    "spec": {
                        "class": "reserved",
                        "gpuBudget": {REAL_PRODUCT: 1},
                        "namespaces": [namespace],
                        "pricePerGpuHour": {REAL_PRODUCT: "2.50"},
                        "currency": "USD",
                    },
                }
            )
            local_volume(kube, "models")
            kube.apply(slo_scaled_md(NAME, tier))
            print("waiting for the ModelDeployment to be ready ...", flush=True)
            kube.run("wait", "--for=condition=Ready", "--timeout=180s", f"md/{NAME}", timeout=190)
            ip = kube.get("service", NAME)["spec"]["clusterIP"]
            start = time.time()
            marks = {}
            for seconds, clients in PHASES:
                marks[f"{clients} client{'s' if clients > 1 else ''}"] = time.time()
                print(f"load: {clients} clients for {seconds}s", flush=True)
                loadgen.run([f"{ip}:8000"], [(seconds, clients)], keepalive=False)
            print("raising the tier's budget to 3 GPUs", flush=True)
            kubectl.run(
                "patch",
                "capacitytier",
                tier,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"gpuBudget": {REAL_PRODUCT: 3}}}),
            )
            marks["budget 1→3"] = time.time()
            loadgen.run([f"{ip}:8000"], [(AFTER_RAISE_S, PHASES[-1][1])], keepalive=False)
            marks["idle"] = time.time()
            time.sleep(20)  # the idle tail of the plot
            end = time.time()
            status = kube.get("md", NAME)["status"]
            print(
                json.dumps(
                    {
                        "slo": {k: v for k, v in status.get("slo", {}).items() if k != "buckets"},
                        "usage": status.get("usage"),
                    },
                    indent=1,
                )
            )
            eventually(
                "Prometheus to hold the run",
                lambda: prom.query("turnpike_slo_burn_rate"),
                timeout=30,
            )
            plot(prom.url, start, end, marks, out)
            print(f"wrote {out}")
    finally:
        # The tier goes once its consumers are gone (its deletion is refused before).
        kubectl.run("delete", "namespace", namespace, "--timeout=120s", check=False)
        with contextlib.suppress(AssertionError):
            eventually(
                f"CapacityTier {tier} deleted",
                lambda: (
                    kubectl.run(
                        "delete", "capacitytier", tier, "--ignore-not-found", check=False
                    ).returncode
                    == 0
                ),
                timeout=60,
            )
        operator.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "slo-dashboard.png")
    args = parser.parse_args(argv)
    return run(args.out)


if __name__ == "__main__":
    sys.exit(main())
