"""Pods Turnpike renders, started by a real kubelet: the product's actual output executed.

Every ModelDeployment here pins the real node's GPU product, so its pods run
under the kubelet, containerd and runc of the local cluster's real node, from
exactly the pod template the operator rendered; no harness starts a Triton.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from hack import loadgen, netrule
from hack.kubectl import Kubectl, eventually
from tests.realpods import (
    MODEL,
    REAL_PRODUCT,
    kube_proxy_backlog_s,
    local_volume,
    model_server,
    real_md,
    realnode_pool_name,
    triton_image,
    wait_kube_proxy_synced,
    wait_real_node_idle,
)

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node", "operator")]

UUID = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def real_node(kubectl: Kubectl) -> dict[str, Any]:
    node: dict[str, Any] = kubectl.get("node", f"{realnode_pool_name()}-0")
    return node


def sleeper(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": REAL_PRODUCT},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": triton_image(),
                    "command": ["sleep", "300"],
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }


def phase(kube: Kubectl, pod: str) -> str:
    return str(kube.get("pod", pod)["status"].get("phase", ""))


def wait_md_ready(kube: Kubectl, name: str, timeout: int = 180) -> dict[str, Any]:
    kube.run(
        "wait", "--for=condition=Ready", f"--timeout={timeout}s", f"md/{name}", timeout=timeout + 10
    )
    md: dict[str, Any] = kube.get("md", name)
    return md


def infer_through_service(kube: Kubectl, name: str) -> list[float]:
    """One inference through the Service's ClusterIP (kube-proxy routes it to a pod)."""
    ip = kube.get("service", name)["spec"]["clusterIP"]
    assert netrule.allowed(ip)
    client = httpclient.InferenceServerClient(url=f"{ip}:8000", connection_timeout=10)
    try:
        data = np.arange(4, dtype=np.float32)
        tensor = httpclient.InferInput("INPUT0", [4], "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer(MODEL, inputs=[tensor], timeout=30)
        output: list[float] = result.as_numpy("OUTPUT0").tolist()
        return output
    finally:
        client.close()


def pods_of(kube: Kubectl, name: str) -> list[dict[str, Any]]:
    return kube.items("pods", "-l", f"turnpike.dev/model-deployment={name}")


def assert_runs_the_rendered_spec(kube: Kubectl, name: str) -> None:
    """Each pod's containers are the Deployment template's, and the kubelet ran them."""
    template = kube.get("deployment", name)["spec"]["template"]["spec"]
    pods = [p for p in pods_of(kube, name) if not p["metadata"].get("deletionTimestamp")]
    assert pods
    for pod in pods:
        assert pod["spec"]["nodeName"] == f"{realnode_pool_name()}-0"
        for field in ("containers", "initContainers", "volumes", "securityContext"):
            rendered = template.get(field)
            running = pod["spec"].get(field)
            if field == "volumes":
                running = [v for v in running or [] if not v["name"].startswith("kube-api-access")]
            assert running == rendered, f"{field} differs from the rendered template"
        statuses = pod["status"]["containerStatuses"]
        assert all(s["ready"] and s["started"] and "running" in s["state"] for s in statuses)
        assert netrule.allowed(pod["status"]["podIP"])
        assert pod["status"]["podIP"] != netrule.NODE_IP


def test_real_node_registers_gpus_through_the_device_plugin(kubectl: Kubectl) -> None:
    node = real_node(kubectl)
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == REAL_PRODUCT
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["turnpike.dev/node-kind"] == "real"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"][
        "taints"
    ]
    gpus = int(labels["nvidia.com/gpu.count"])
    assert int(node["status"]["capacity"]["nvidia.com/gpu"]) == gpus
    assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) == gpus
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == netrule.NODE_IP
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://2.")
    assert info["kubeletVersion"] == kubectl.json("version")["serverVersion"]["gitVersion"]


def test_the_kubelet_allocates_fake_gpus_and_frees_them(kubectl: Kubectl, kube: Kubectl) -> None:
    wait_real_node_idle(kubectl)
    gpus = int(real_node(kubectl)["status"]["allocatable"]["nvidia.com/gpu"])
    kube.apply(sleeper("all-gpus", gpus))
    eventually("all-gpus Running", lambda: phase(kube, "all-gpus") == "Running", timeout=120)
    env = kube.run("exec", "all-gpus", "--", "printenv", "NVIDIA_VISIBLE_DEVICES").stdout.strip()
    devices = env.split(",")
    assert len(devices) == gpus and len(set(devices)) == gpus
    assert all(UUID.match(d) for d in devices), devices

    kube.apply(sleeper("one-more", 1))

    def unschedulable() -> str | None:
        pod = kube.get("pod", "one-more")
        for c in pod["status"].get("conditions", []):
            if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable":
                return str(c.get("message", ""))
        return None

    message = eventually("one-more unschedulable", unschedulable, timeout=60)
    assert "nvidia.com/gpu" in message
    assert phase(kube, "one-more") == "Pending"

    kube.run("delete", "pod", "all-gpus", "--wait=true", timeout=90)
    eventually("one-more Running once GPUs are freed",
               lambda: phase(kube, "one-more") == "Running", timeout=120)


def test_pods_have_no_route_off_the_bridge(kube: Kubectl) -> None:
    """A pod can reach the harness range and nothing else: the kernel refuses the
    rest before a packet is sent (TEST-NET-3 below is never routed anywhere)."""
    kube.apply(sleeper("no-route", 1))
    eventually("no-route Running", lambda: phase(kube, "no-route") == "Running", timeout=120)
    probe = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(3)\n"
        "try:\n"
        "    s.connect(('203.0.113.1', 80))\n"
        "except OSError as e:\n"
        "    print(e.errno, e.strerror)\n"
    )
    out = kube.run("exec", "no-route", "--", "python3", "-c", probe).stdout
    assert "Network is unreachable" in out, out
    routes = kube.run("exec", "no-route", "--", "cat", "/proc/net/route").stdout
    table = [line.split() for line in routes.splitlines()[1:] if line.strip()]
    # /proc/net/route columns: Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    assert not [r for r in table if r[1] == "00000000" and r[7] == "00000000"], routes


def test_host_network_pods_are_refused(kube: Kubectl) -> None:
    """They would share the host's interfaces and so bypass the guard's per-interface rules."""
    pod = sleeper("host-net", 1)
    pod["spec"]["hostNetwork"] = True

    def refusal() -> str | None:
        result = kube.run("create", "-f", "-", stdin=json.dumps(pod), check=False)
        if result.returncode == 0:
            kube.run("delete", "pod", "host-net", "--wait=false", check=False)
            return None
        return result.stderr

    message = eventually("the hostNetwork pod refused", refusal, timeout=30)
    assert "refuses hostNetwork pods" in message


def test_model_deployment_runs_from_exactly_the_rendered_spec(kube: Kubectl) -> None:
    """pvc:// on a local PersistentVolume; probes, Service, and the autoscaler's scrape."""
    local_volume(kube, "models")
    kube.apply(
        real_md(
            "sleepy-pvc",
            "pvc://models",
            minReplicas=1,
            maxReplicas=2,
            autoscaling={"enabled": True, "target": 4, "scrapeIntervalSeconds": 1},
        )
    )
    wait_md_ready(kube, "sleepy-pvc")
    assert_runs_the_rendered_spec(kube, "sleepy-pvc")
    pod = pods_of(kube, "sleepy-pvc")[0]
    triton = pod["spec"]["containers"][0]
    assert triton["image"] == triton_image()
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(triton)
    assert infer_through_service(kube, "sleepy-pvc") == [0.0, 1.0, 2.0, 3.0]
    # The autoscaler read this pod's Triton /metrics over the pod network.
    status = eventually(
        "status.queueDepth from the pod's metrics",
        lambda: (lambda s: s if s.get("queueDepth") is not None else None)(
            kube.get("md", "sleepy-pvc")["status"]
        ),
        timeout=60,
    )
    assert status["queueDepth"] == 0


def test_model_arrives_over_http_through_the_download_init_container(kube: Kubectl) -> None:
    with model_server() as server:
        kube.apply(real_md("sleepy-http", server.tarball_url))
        wait_md_ready(kube, "sleepy-http")
        assert ("/models/sleepy.tar.gz", None) in server.requests
    assert_runs_the_rendered_spec(kube, "sleepy-http")
    pod = pods_of(kube, "sleepy-http")[0]
    init = pod["status"]["initContainerStatuses"][0]
    assert init["name"] == "download-model"
    assert init["state"]["terminated"]["exitCode"] == 0
    logs = kube.run("logs", pod["metadata"]["name"], "-c", "download-model").stdout
    assert "model repository ready" in logs
    assert infer_through_service(kube, "sleepy-http") == [0.0, 1.0, 2.0, 3.0]


def test_model_arrives_from_a_hub_endpoint_with_the_secrets_token(kube: Kubectl) -> None:
    token = "hf_local_test_token_3f9a"
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hub-token"},
            "stringData": {"HF_TOKEN": token},
        }
    )
    with model_server(token=token) as server:
        kube.apply(
            real_md(
                "sleepy-hub",
                "hf://turnpike/sleepy-models",
                model={"credentials": {"name": "hub-token"}},
                runtime={"env": [{"name": "HF_ENDPOINT", "value": server.url}]},
            )
        )
        wait_md_ready(kube, "sleepy-hub")
        hub_requests = [r for r in server.requests if r[0].startswith(("/api/", "/turnpike/"))]
    assert hub_requests and all(auth == f"Bearer {token}" for _, auth in hub_requests)
    assert any("/resolve/main/sleepy/1/model.py" in path for path, _ in hub_requests)
    # The token reached the pod only through the Secret reference.
    rendered = json.dumps(kube.get("deployment", "sleepy-hub"))
    assert token not in rendered
    assert {"secretRef": {"name": "hub-token"}} in kube.get("deployment", "sleepy-hub")["spec"][
        "template"
    ]["spec"]["initContainers"][0]["envFrom"]
    assert_runs_the_rendered_spec(kube, "sleepy-hub")
    assert infer_through_service(kube, "sleepy-hub") == [0.0, 1.0, 2.0, 3.0]


def test_spec_change_rolls_real_pods_without_a_failed_request(
    kubectl: Kubectl, kube: Kubectl,
    figure: Callable[[str], None],
) -> None:
    wait_real_node_idle(kubectl)
    local_volume(kube, "models")
    kube.apply(real_md("sleepy-roll", "pvc://models", replicas=2))
    wait_md_ready(kube, "sleepy-roll")
    wait_kube_proxy_synced()
    before = {p["metadata"]["name"] for p in pods_of(kube, "sleepy-roll")}
    ip = kube.get("service", "sleepy-roll")["spec"]["clusterIP"]

    # A new connection per request: kube-proxy balances connections, so this is
    # how a client behind a plain Service reaches the new pods (see loadgen).
    with loadgen.background(
        [f"{ip}:8000"], [(240, 4)], max_requests=20_000, keepalive=False
    ) as load:
        eventually("load flowing", lambda: load.sent() > 20, timeout=30)
        kube.run(
            "patch", "md", "sleepy-roll", "--type=merge", "-p",
            json.dumps({"spec": {"runtime": {"env": [{"name": "ROLL", "value": "1"}]}}}),
        )

        def rolled() -> bool:
            pods = pods_of(kube, "sleepy-roll")
            names = {p["metadata"]["name"] for p in pods}
            ready = [p for p in pods if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", []))]
            return not (names & before) and len(ready) == 2

        started = time.monotonic()
        eventually("the rollout done and old pods gone", rolled, timeout=240, interval=1)
        rollout_s = time.monotonic() - started
        # Keep the load on a little after the last old pod went away.
        sent_at_end = load.sent()
        eventually("more load after the rollout", lambda: load.sent() > sent_at_end + 20,
                   timeout=30)
        load.stop()
    result = load.result()
    figure(f"rollout of 2 real pods under load: {rollout_s:.1f}s, {result.sent} requests, "
        f"{result.ok} ok, {result.failed} failed"
    )
    assert result.sent > 100
    failed_at = [t for p in result.phases for t in p.failed_at_s]
    assert result.failed == 0, (
        [p.errors for p in result.phases],
        f"failures from {min(failed_at, default=0):.1f}s to {max(failed_at, default=0):.1f}s "
        f"after the load began; kube-proxy backlog now {kube_proxy_backlog_s()}s",
    )
