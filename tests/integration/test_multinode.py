"""Multi-node replicas (gpu.nodesPerReplica above 1) on the real LeaderWorkerSet controller.

A TensorRT-LLM model at tp 8 × pp 2 needs 16 GPUs: two 8-GPU H100 nodes per
replica. The operator renders a LeaderWorkerSet; the real LWS controller (and
its pod webhook) and the real scheduler place each group's two pods on the two
H100 nodes (kwok pools: scheduled and marked running, not started), and status
follows the groups. The launch on real pods is tested where the real node runs
them (its own test).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hack import lws
from hack.kubectl import Kubectl, eventually
from tests.groups import gpu_pods_on_h100, group_pods

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator")]

H100 = "NVIDIA-H100-80GB-HBM3"
GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"


def multinode_md(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "s3://models/llama-3.1-405b-engine", "backend": "tensorrtllm"},
            "gpu": {
                "product": H100,
                "tensorParallelism": 8,
                "pipelineParallelism": 2,
                "nodesPerReplica": 2,
                "exclusiveTopology": "turnpike.dev/pool",
            },
            **spec,
        },
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_]
    return found[0] if found else {}


def md_when(
    kube: Kubectl, name: str, type_: str, status: str, what: str, timeout: float
) -> dict[str, Any]:
    """The ModelDeployment once its condition ``type_`` has ``status``."""

    def probe() -> dict[str, Any] | None:
        md: dict[str, Any] = kube.get("md", name)
        return md if condition(md, type_).get("status") == status else None

    return eventually(what, probe, timeout=timeout, interval=1)


def test_a_tp8_pp2_model_runs_as_two_node_groups_and_status_follows_them(
    lws_controller: lws.Controller, kubectl: Kubectl, kube: Kubectl, figure: Any
) -> None:
    eventually(
        "the H100 nodes free of GPU pods",
        lambda: not gpu_pods_on_h100(kubectl) or None,
        timeout=120,
        interval=1,
    )
    kube.apply(multinode_md("llama-405b"))

    lws_object = eventually(
        "the LeaderWorkerSet rendered", lambda: kube.get("leaderworkerset", "llama-405b")
    )
    template = lws_object["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader_gpus = template["leaderTemplate"]["spec"]["containers"][0]["resources"]["limits"]
    assert leader_gpus["nvidia.com/gpu"] == "8"
    # LWS names its headless Service (the group's DNS names) after itself; the
    # Service clients use is the one status.endpoint names, selecting leaders only.
    headless = eventually(
        "LWS's headless Service", lambda: kube.get("service", "llama-405b"), timeout=30
    )
    assert headless["spec"]["clusterIP"] == "None"
    endpoint = eventually(
        "status.endpoint",
        lambda: kube.get("md", "llama-405b").get("status", {}).get("endpoint"),
        timeout=30,
    )
    service = kube.get("service", endpoint.split("//")[1].split(".")[0])
    assert service["spec"]["selector"][WORKER_INDEX] == "0"
    secret = kube.get("secret", "llama-405b-mpi")
    assert set(secret["data"]) == {
        "authorized_keys",
        "id_ed25519",
        "known_hosts",
        "ssh_host_ed25519_key",
    }

    md = md_when(kube, "llama-405b", "Ready", "True", "the ModelDeployment Ready", 120)
    pods = group_pods(kube, "llama-405b")
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(pods) == 2 and len(nodes) == 2 and all(n.startswith("h100-") for n in nodes)
    groups = md["status"]["groups"]
    assert [(g["index"], g["ready"], g["podsReady"], g["pods"]) for g in groups] == [
        (0, True, 2, 2)
    ], groups
    assert md["status"]["readyReplicas"] == 1 and md["status"]["gpus"] == 16

    # A worker goes: LWS recreates the whole group, and status says which and how often.
    leader_uid = groups[0]["leaderUid"]
    worker = next(p for p in pods if p["metadata"]["labels"][WORKER_INDEX] == "1")
    kube.run("delete", "pod", worker["metadata"]["name"], "--wait=false")

    def restarted() -> dict[str, Any] | None:
        m = kube.get("md", "llama-405b")
        g = (m.get("status", {}).get("groups") or [{}])[0]
        return m if g.get("restarts") == 1 and g.get("leaderUid") != leader_uid else None

    md = eventually("status.groups counts the restart", restarted, timeout=120, interval=1)
    events = kube.items(
        "events", "--field-selector", "involvedObject.name=llama-405b,reason=GroupRestarted"
    )
    assert events, "no GroupRestarted Event"
    assert "group 0 was recreated" in events[0]["message"]
    md = md_when(kube, "llama-405b", "Ready", "True", "Ready again after the restart", 120)
    figure(
        f"tp8xpp2 on 2x8 H100: group 0 on {sorted(nodes)}; worker deleted -> group recreated, "
        f"status.groups[0].restarts={md['status']['groups'][0]['restarts']}, "
        f"lastRestart={md['status']['groups'][0]['lastRestart']}"
    )
    assert lws_controller.alive(), lws_controller.log_tail()


def test_nodes_per_replica_cannot_change_in_place(kube: Kubectl) -> None:
    """The Deployment <-> LeaderWorkerSet switch is refused at admission: a replica's
    process layout is fixed at creation (see docs/multinode.md)."""
    kube.apply(multinode_md("fixed-layout", replicas=0))
    body = multinode_md("fixed-layout", replicas=0)
    body["spec"]["gpu"] = {"product": H100, "tensorParallelism": 8, "pipelineParallelism": 2}
    result = kube.run(
        "apply",
        "--server-side",
        "--field-manager=tests",
        "-f",
        "-",
        stdin=json.dumps(body),
        check=False,
    )
    assert result.returncode != 0
    assert "gpu.nodesPerReplica cannot change in place" in result.stderr


def test_a_tier_accounts_a_group_as_nodes_times_gpus_per_node(
    lws_controller: lws.Controller, kubectl: Kubectl, kube: Kubectl, tiers: list[str]
) -> None:
    """A budget of 16 H100 GPUs holds exactly one tp 8 × pp 2 group (two 8-GPU
    pods): a second deployment of the same shape in the tier is held back, and
    says why in the tier's usual words."""
    name = f"one-group-{kube.namespace or ''}"[:63].rstrip("-")
    kubectl.apply(
        {
            "apiVersion": "turnpike.dev/v1alpha1",
            "kind": "CapacityTier",
            "metadata": {"name": name},
            "spec": {
                "class": "reserved",
                "gpuBudget": {H100: 16},
                "namespaces": [kube.namespace or ""],
            },
        }
    )
    tiers.append(name)
    eventually(
        "the H100 nodes free of GPU pods",
        lambda: not gpu_pods_on_h100(kubectl) or None,
        timeout=120,
        interval=1,
    )
    kube.apply(multinode_md("first", tier=name))
    first = md_when(kube, "first", "Ready", "True", "the first group Ready", 120)
    assert first["status"]["gpus"] == 16
    assert condition(first, "CapacityAvailable")["status"] == "True"

    kube.apply(multinode_md("second", tier=name))
    second = md_when(kube, "second", "CapacityAvailable", "False", "the second held back", 60)
    capacity = condition(second, "CapacityAvailable")
    assert capacity["reason"] in ("BudgetExhausted", "MinReplicasDoNotFit"), capacity
    assert "needs 16 GPUs" in capacity["message"] and "0 are free" in capacity["message"]
    assert second["status"]["desiredReplicas"] == 0
    assert kube.get("leaderworkerset", "second")["spec"]["replicas"] == 0
    assert group_pods(kube, "second") == []
    # The tier is deleted after its consumers (the fixture), so they go first.
    kube.run("delete", "md", "--all", "--wait=true", "--timeout=60s", timeout=70)
