"""A multi-node replica on the real node: the rendered launch really runs.

Each group is two pods started by the kubelet from exactly what Turnpike
rendered: the leader waits for the worker's sshd (keys from the operator's
Secret), then ``mpirun`` starts one Triton rank in each pod over ssh, with the
group's addresses from LeaderWorkerSet (cluster DNS). Triton cannot run
TensorRT-LLM on a CPU, so rank 0 serves the ``sleepy`` Python model (the
spec's ``model.name``) and rank 1, which looks for the ``tensorrt_llm`` model
as a TensorRT-LLM worker rank does, finds none and stays up idle
(``--exit-on-error=false``). The MPI job itself is proven with a real
collective: the repository's rank-reporting program is launched through the
leader's own launch script, environment and keys.

Then the autoscaler scales groups from the leaders' queue (1 → 2 → 1), and a
tier with room for one group holds the second back until its budget grows.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from hack import loadgen, lws
from hack.kubectl import Kubectl, eventually
from tests.groups import group_pods
from tests.realpods import REAL_PRODUCT, local_volume, real_md, wait_real_node_idle

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator", "real_node")]

GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_]
    return found[0] if found else {}


def multinode_md(name: str, tier: str) -> dict[str, Any]:
    body = real_md(
        name,
        "pvc://models",
        tier=tier,
        minReplicas=1,
        maxReplicas=2,
        autoscaling={
            "enabled": True,
            "target": 2,
            "scrapeIntervalSeconds": 1,
            "panicWindowSeconds": 2,
            "stabilizationWindowSeconds": 20,
            "scaleDownPeriodSeconds": 10,
        },
        runtime={"args": ["--exit-on-error=false"]},
    )
    body["spec"]["model"]["backend"] = "tensorrtllm"
    body["spec"]["gpu"] = {"tensorParallelism": 2, "nodesPerReplica": 2, "product": REAL_PRODUCT}
    return body


def test_groups_launch_mpi_across_real_pods_and_scale_within_their_tier(
    lws_controller: lws.Controller, kubectl: Kubectl, kube: Kubectl, tiers: list[str], figure: Any
) -> None:
    wait_real_node_idle(kubectl)
    local_volume(kube, "models")
    tier = f"one-group-{uuid.uuid4().hex[:5]}"
    kubectl.apply(
        {
            "apiVersion": "turnpike.dev/v1alpha1",
            "kind": "CapacityTier",
            "metadata": {"name": tier},
            # One group: two pods of one GPU each.
            "spec": {
                "class": "reserved",
                "gpuBudget": {REAL_PRODUCT: 2},
                "namespaces": [kube.namespace or ""],
            },
        }
    )
    tiers.append(tier)
    kube.apply(multinode_md("mn", tier))
    kube.run("wait", "--for=condition=Ready", "--timeout=300s", "md/mn", timeout=310)

    pods = group_pods(kube, "mn")
    leader = next(p for p in pods if p["metadata"]["labels"][WORKER_INDEX] == "0")
    worker = next(p for p in pods if p["metadata"]["labels"][WORKER_INDEX] == "1")
    leader_name, worker_name = leader["metadata"]["name"], worker["metadata"]["name"]
    namespace = kube.namespace
    log = kube.run("logs", leader_name, "-c", "triton").stdout
    assert f"launching 2 ranks on mn-0.mn.{namespace}:1,mn-0-1.mn.{namespace}:1" in log, log[-2000:]

    # Rank 1 runs in the worker pod, started over ssh by the leader's mpirun.
    processes = kube.run(
        "exec",
        worker_name,
        "-c",
        "mpi-worker",
        "--",
        "python3",
        "-c",
        "import os\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit():\n"
        "        try: c = open(f'/proc/{p}/cmdline','rb').read().split(b'\\0')\n"
        "        except OSError: continue\n"
        "        print(' '.join(x.decode() for x in c if x))",
    ).stdout
    ranks = [line for line in processes.splitlines() if line.startswith("tritonserver ")]
    assert len(ranks) == 1 and "--allow-http=false" in ranks[0], processes
    assert "--load-model=tensorrt_llm" in ranks[0]
    assert any("orted" in line for line in processes.splitlines()), processes

    # A real MPI collective through the leader's own launch script, keys and environment.
    # The kubelet unescapes $$( to $( (turnpike.render.expansion.literal); exec does not.
    script = leader["spec"]["containers"][0]["command"][2].replace("$$", "$")
    report = kube.run(
        "exec",
        leader_name,
        "-c",
        "triton",
        "--",
        "/bin/sh",
        "-c",
        script,
        "turnpike-launch",
        "mpirun",
        "--allow-run-as-root",
        "--bind-to",
        "none",
        "-n",
        "1",
        "mpi-rank-report",
        ":",
        "-n",
        "1",
        "mpi-rank-report",
        timeout=120,
    ).stdout
    result = json.loads(report.strip().splitlines()[-1])
    ips = {leader_name: leader["status"]["podIP"], worker_name: worker["status"]["podIP"]}
    assert result["size"] == 2
    assert [(r["rank"], r["host"], r["ip"]) for r in result["ranks"]] == [
        (0, leader_name, ips[leader_name]),
        (1, worker_name, ips[worker_name]),
    ], result

    # Load on the leaders' Service: the autoscaler wants a second group, the tier says no.
    serving = kube.get("md", "mn")["status"]["endpoint"].split("//")[1].split(".")[0]
    service = kube.get("service", serving)["spec"]["clusterIP"]
    with loadgen.background([f"{service}:8000"], [(240, 24)], keepalive=False) as load:
        limited = eventually(
            "a second group held back by the tier",
            lambda: (
                m
                if condition(m := kube.get("md", "mn"), "CapacityAvailable").get("status")
                == "False"
                else None
            ),
            timeout=90,
            interval=1,
        )
        capacity = condition(limited, "CapacityAvailable")
        assert capacity["reason"] == "BudgetExhausted", capacity
        assert kube.get("leaderworkerset", "mn")["spec"]["replicas"] == 1
        kubectl.run(
            "patch",
            "capacitytier",
            tier,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"gpuBudget": {REAL_PRODUCT: 4}}}),
        )
        two = eventually(
            "two groups ready",
            lambda: m if (m := kube.get("md", "mn"))["status"].get("readyReplicas") == 2 else None,
            timeout=240,
            interval=1,
        )
        load.stop()
    groups = two["status"]["groups"]
    assert [(g["index"], g["ready"], g["pods"]) for g in groups] == [(0, True, 2), (1, True, 2)]
    assert two["status"]["gpus"] == 4
    one = eventually(
        "back to one group once the load stopped",
        lambda: (
            m
            if (m := kube.get("md", "mn"))["status"].get("desiredReplicas") == 1
            and len(group_pods(kube, "mn")) == 2
            else None
        ),
        timeout=180,
        interval=1,
    )
    figure(
        "multi-node on the real node: mpirun over ssh across 2 pods "
        f"(rank report {result['ranks']}); groups 1 -> 2 (held back at budget 2 GPUs, "
        f"released at 4) -> 1; lastScale {one['status'].get('lastScale')}"
    )
    kube.run("delete", "md", "--all", "--wait=true", "--timeout=90s", timeout=100)
