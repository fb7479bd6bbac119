"""The real LeaderWorkerSet controller on the local cluster (issue 14's groundwork).

Multi-node replicas will be LeaderWorkerSets; before Turnpike renders any, the
local cluster must run the real controller: built from ``hack/lws/go.mod``,
its CRD installed, its webhooks served (they give each pod of a group its
index, its leader's address and the group size) and its group semantics in
force. This checks exactly what Turnpike will rely on, with a group shaped like
a tp 8 × pp 2 replica: two pods of 8 GPUs on two H100 nodes (kwok pools), the
pool exclusive to the group (exclusive topology), the group recreated as a unit
when one of its pods goes.
"""

from __future__ import annotations

from typing import Any

import pytest

from hack import lws
from hack.kubectl import Kubectl, eventually
from tests.groups import gpu_pods_on_h100, group_pods

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster")]

H100 = "NVIDIA-H100-80GB-HBM3"


@pytest.fixture
def controller(lws_controller: lws.Controller) -> lws.Controller:
    return lws_controller


def group_of_two(name: str) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": H100},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "containers": [
                {
                    "name": "rank",
                    "image": "turnpike.local/not-pulled:kwok",
                    "resources": {"limits": {"nvidia.com/gpu": 8}},
                }
            ],
        }
    }
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {
            "name": name,
            # A group's pods share one node pool (the interconnect domain) and the
            # pool holds no other group: the pod webhook turns this into affinity
            # and anti-affinity. The 8-GPU limit puts each pod on its own node.
            "annotations": {"leaderworkerset.sigs.k8s.io/exclusive-topology": "turnpike.dev/pool"},
        },
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "workerTemplate": pod,
            },
        },
    }


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0].get("env", [])}


def test_a_two_node_group_lands_on_two_h100_nodes_and_restarts_as_a_unit(
    controller: lws.Controller, kubectl: Kubectl, kube: Kubectl, figure: Any
) -> None:
    # Earlier tests' namespaces are deleted without waiting: let their pods leave
    # the H100 nodes, whose every GPU this group needs.
    eventually(
        "the H100 nodes free of GPU pods",
        lambda: not gpu_pods_on_h100(kubectl) or None,
        timeout=120,
        interval=1,
    )
    kube.apply(group_of_two("llama-405b"))

    def placed() -> list[dict[str, Any]] | None:
        pods = group_pods(kube, "llama-405b")
        running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
        return pods if len(running) == 2 else None

    pods = eventually("the group's two pods Running", placed, timeout=120, interval=1)
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 2 and all(n.startswith("h100-") for n in nodes), nodes
    by_index = {
        p["metadata"]["labels"]["leaderworkerset.sigs.k8s.io/worker-index"]: p for p in pods
    }
    leader, worker = by_index["0"], by_index["1"]
    # What the pod webhook gives every pod: the launch path needs these.
    for pod in (leader, worker):
        env = env_of(pod)
        assert env["LWS_GROUP_SIZE"] == "2"
        assert env["LWS_LEADER_ADDRESS"].startswith(f"llama-405b-0.llama-405b.{kube.namespace}")
        assert (
            env["LWS_WORKER_INDEX"]
            == pod["metadata"]["labels"]["leaderworkerset.sigs.k8s.io/worker-index"]
        )
    ready = eventually(
        "the LeaderWorkerSet ready",
        lambda: kube.get("leaderworkerset", "llama-405b").get("status", {}).get("readyReplicas"),
        timeout=60,
    )
    assert ready == 1

    # A worker goes: the whole group is recreated (RecreateGroupOnPodRestart).
    leader_uid = leader["metadata"]["uid"]
    kube.run("delete", "pod", worker["metadata"]["name"], "--wait=false")

    def recreated() -> list[dict[str, Any]] | None:
        pods = placed()
        if pods is None:
            return None
        uids = {p["metadata"]["uid"] for p in pods}
        return pods if leader_uid not in uids else None

    again = eventually("the group recreated", recreated, timeout=120, interval=1)
    figure(
        f"LWS v0.8.0 controller: 2-pod group on {sorted(nodes)}, env "
        f"LWS_LEADER_ADDRESS={env_of(leader)['LWS_LEADER_ADDRESS']}; deleting the worker "
        f"recreated the group (new leader {again[0]['metadata']['name']})"
    )
    assert controller.alive(), controller.log_tail()
