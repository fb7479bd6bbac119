"""The operator installed the way users install it: `helm install` of charts/turnpike.

On the local cluster the chart's Deployment runs the operator image built from
the repository's Dockerfile (``hack/images``) as pods on the real node: the
chart's ServiceAccount token, in-cluster config (the API server reached through
the `kubernetes` Service), Pod Security `restricted`, two replicas and one
leader. Used by the demo and the fault suite.

    op = chart_operator.install(kubectl, helm, image)
    op.wait_ready()
    op.metrics()       # the leader pod's /metrics, as {'name{labels}': value}
    op.uninstall()

With ``--set gateway.enabled=true`` among the values the release also runs
`turnpike gateway` pods (``op.gateway_pods()``, ``op.gateway_address()``).
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hack.kubectl import Kubectl, eventually
from hack.operator_process import scrape

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "turnpike"
# What Pod Security admission enforces in the release namespace.
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}
METRICS_PORT = 8080
# The chart's gateway.port default: requests, /metrics and /turnpike/load of a gateway pod.
GATEWAY_PORT = 8080
OPERATOR_PODS = "app.kubernetes.io/component=operator"
GATEWAY_PODS = "app.kubernetes.io/component=gateway"


def ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def image_values(image: str) -> list[str]:
    repository, _, tag = image.rpartition(":")
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]


@dataclass
class ChartOperator:
    kubectl: Kubectl
    helm_binary: str
    release: str
    namespace: str
    image: str

    @property
    def fullname(self) -> str:
        """The chart's ``turnpike.fullname`` (no name overrides): the Lease's name too."""
        name = self.release if "turnpike" in self.release else f"{self.release}-turnpike"
        return name[:63].rstrip("-")

    @property
    def kube(self) -> Kubectl:
        return self.kubectl.in_namespace(self.namespace)

    def helm(self, *args: str, timeout: float = 240) -> str:
        result = subprocess.run(
            [self.helm_binary, f"--kubeconfig={self.kubectl.kubeconfig}", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args[:2])} failed: {result.stderr.strip()}")
        return result.stdout

    def _release_pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.release},{component}"
        return [
            p
            for p in self.kube.items("pods", "-l", selector)
            if not p["metadata"].get("deletionTimestamp")
        ]

    def pods(self) -> list[dict[str, Any]]:
        """The operator's pods (not the release's gateway pods, when it has some)."""
        return self._release_pods(OPERATOR_PODS)

    def gateway_pods(self) -> list[dict[str, Any]]:
        """The release's `turnpike gateway` pods (none unless gateway.enabled)."""
        return self._release_pods(GATEWAY_PODS)

    def gateway_address(self) -> str:
        """http://IP:PORT of a ready gateway pod, over the pod network like metrics():
        the host reaches pod IPs, not necessarily the gateway Service's ClusterIP."""
        for pod in self.gateway_pods():
            if ready(pod) and pod["status"].get("podIP"):
                return f"http://{pod['status']['podIP']}:{GATEWAY_PORT}"
        raise OSError(f"no ready gateway pod in {self.namespace}")

    def leader(self) -> str | None:
        lease = self.kube.get("lease", self.fullname)
        holder = lease.get("spec", {}).get("holderIdentity")
        return str(holder) if holder else None

    def wait_ready(self, timeout: float = 180) -> list[dict[str, Any]]:
        def all_ready() -> list[dict[str, Any]] | None:
            pods = self.pods()
            return pods if len(pods) == 2 and all(ready(p) for p in pods) else None

        return eventually("two operator pods Ready", all_ready, timeout=timeout, interval=1)

    def metrics(self) -> dict[str, float]:
        """The leader pod's /metrics, read over the pod network, as {'name{labels}': value}."""
        leader = self.leader()
        pod = next((p for p in self.pods() if p["metadata"]["name"] == leader), None)
        if pod is None or not pod["status"].get("podIP"):
            raise OSError("no leader pod with an address")
        return scrape(f"http://{pod['status']['podIP']}:{METRICS_PORT}/metrics")

    def uninstall(self) -> None:
        subprocess.run(
            [self.helm_binary, f"--kubeconfig={self.kubectl.kubeconfig}", "uninstall",
             self.release, "--namespace", self.namespace, "--wait", "--timeout=120s"],
            capture_output=True, timeout=180, check=False,
        )
        self.kubectl.run("delete", "namespace", self.namespace, "--wait=false", check=False)


def install(
    kubectl: Kubectl, helm_binary: str, image: str, *values: str, name: str | None = None
) -> ChartOperator:
    """`helm install` into a new namespace that enforces Pod Security `restricted`.

    CRDs and the admission policies are expected on the cluster already
    (``--skip-crds``, ``admissionPolicies.enabled=false``), as a platform team
    that manages them apart would run it.
    """
    suffix = uuid.uuid4().hex[:5]
    release = name or f"tp-{suffix}"
    namespace = f"turnpike-system-{suffix}"
    kubectl.apply(
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": namespace, "labels": RESTRICTED}}
    )
    op = ChartOperator(kubectl, helm_binary, release, namespace, image)
    op.helm(
        "install", release, str(CHART), "--namespace", namespace,
        "--skip-crds", "--set", "admissionPolicies.enabled=false",
        *image_values(image),
        # The image exists only in the node's containerd: never pull.
        "--set", "image.pullPolicy=Never",
        # The real node is the one that runs pods, and it carries the GPU taint.
        "--set", "nodeSelector.turnpike\\.dev/node-kind=real",
        "--set", "tolerations[0].key=nvidia.com/gpu",
        "--set", "tolerations[0].operator=Exists",
        "--set", "tolerations[0].effect=NoSchedule",
        *values,
    )
    return op
