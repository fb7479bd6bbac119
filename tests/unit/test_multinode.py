"""Multi-node replicas: the API, the LeaderWorkerSet and its launch, the ssh keys,
status.groups, and the reconciler's Deployment <-> LeaderWorkerSet choice."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.unit.builders import NAME, NAMESPACE, md
from tests.unit.fakekube import FakeKube, cache_fed_by
from turnpike.api.constants import LWS_GROUP_INDEX_LABEL, LWS_WORKER_INDEX_LABEL
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.api.status import Group
from turnpike.capacity.consumers import rolling, surges
from turnpike.controller.autoscaler import split_pods
from turnpike.controller.metrics import Metrics
from turnpike.controller.modeldeployment import ModelDeploymentReconciler
from turnpike.controller.mpikeys import generate_mpi_keys
from turnpike.gateway.discovery import endpoint_from
from turnpike.kube import Kube
from turnpike.reconcile.children import desired_children
from turnpike.reconcile.plan import after_apply
from turnpike.render.command import mpi_ranks
from turnpike.render.leaderworkerset import LAUNCH_SCRIPT, render_leaderworkerset
from turnpike.render.mpikeys import (
    MpiKeys,
    keys_from_secret,
    render_mpi_secret,
    sshd_command,
)
from turnpike.status.conditions import rollout_of
from turnpike.status.groups import group_holdup, group_statuses

H100 = "NVIDIA-H100-80GB-HBM3"


def spec(tp: int = 8, pp: int = 2, nodes: int = 2, **gpu: Any) -> dict[str, Any]:
    return {
        "model": {"uri": "s3://bucket/llama-405b", "backend": "tensorrtllm"},
        "gpu": {
            "tensorParallelism": tp,
            "pipelineParallelism": pp,
            "nodesPerReplica": nodes,
            "product": H100,
            **gpu,
        },
    }


def parsed(body_spec: dict[str, Any]) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {"metadata": {"name": NAME, "namespace": NAMESPACE}, "spec": body_spec}
    )


KEYS = MpiKeys(
    "CLIENT-PRIVATE\n", "ssh-ed25519 AAAAclient c", "HOST-PRIVATE\n", "ssh-ed25519 AAAAhost h"
)


# --- the API ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "message"),
    [
        ({"tensorParallelism": 3, "pipelineParallelism": 1, "nodesPerReplica": 2}, "multiple of"),
        ({"nodesPerReplica": 17}, "less than or equal to 16"),
        (
            {
                "tensorParallelism": 1,
                "nodesPerReplica": 1,
                "exclusiveTopology": "turnpike.dev/pool",
            },
            "needs nodesPerReplica above 1",
        ),
        ({"exclusiveTopology": "bad key!"}, "String should match pattern"),
    ],
)
def test_inconsistent_layouts_are_refused(gpu: dict[str, Any], message: str) -> None:
    body = spec()
    body["gpu"].update(gpu)
    with pytest.raises(ValidationError, match=message):
        parsed(body)


def test_multi_node_needs_the_tensorrtllm_backend() -> None:
    body = spec()
    body["model"]["backend"] = "vllm"
    with pytest.raises(ValidationError, match="needs backend tensorrtllm"):
        parsed(body)


def test_the_layout_is_immutable_at_admission() -> None:
    """Crossing the Deployment <-> LeaderWorkerSet boundary is refused in place."""
    from turnpike.api.modeldeployment import MD_SPEC_RULES

    rules = [r.cel for r in MD_SPEC_RULES if "oldSelf.gpu.nodesPerReplica" in r.cel]
    assert rules == ["self.gpu.nodesPerReplica == oldSelf.gpu.nodesPerReplica"]


# --- rendering: every tp × pp × nodes combination --------------------------------------

layouts = st.tuples(
    st.sampled_from([1, 2, 4, 8, 16]),
    st.sampled_from([1, 2, 4]),
    st.sampled_from([1, 2, 4, 8, 16]),
).filter(lambda t: (t[0] * t[1]) % t[2] == 0)


@given(layouts)
@settings(max_examples=60, deadline=None)
def test_every_layout_renders_one_workload_with_one_rank_per_gpu(
    layout: tuple[int, int, int],
) -> None:
    tp, pp, nodes = layout
    model = parsed(spec(tp, pp, nodes))
    children = desired_children(model, 2, "uid", mpi_keys=KEYS)
    kinds = [c["kind"] for c in children]
    per_node = tp * pp // nodes
    if nodes == 1:
        assert kinds == ["Deployment", "Service", "PodDisruptionBudget"]
        pod = children[0]["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(tp * pp)
        assert LWS_WORKER_INDEX_LABEL not in children[1]["spec"]["selector"]
        return
    assert kinds == ["Secret", "LeaderWorkerSet", "Service", "PodDisruptionBudget"]
    lws = children[1]
    template = lws["spec"]["leaderWorkerTemplate"]
    assert lws["spec"]["replicas"] == 2
    assert template["size"] == nodes
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = template["leaderTemplate"]["spec"]
    worker = template["workerTemplate"]["spec"]
    for pod in (leader, worker):
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(per_node)
        assert container["resources"]["requests"]["nvidia.com/gpu"] == str(per_node)
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["mpi-keys"]["readOnly"] is True
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["mpi-keys"]["secret"]["secretName"] == f"{NAME}-mpi"
    triton = leader["containers"][0]
    argv = triton["args"]
    assert argv[0] == "mpirun" and len(mpi_ranks(argv)) == tp * pp
    env = {e["name"]: e.get("value") for e in triton["env"]}
    assert env["TURNPIKE_RANKS_PER_NODE"] == str(per_node)
    assert env["OMPI_MCA_plm_rsh_agent"] == "ssh"
    assert "StrictHostKeyChecking=yes" in env["OMPI_MCA_plm_rsh_args"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert worker["containers"][0]["command"] == sshd_command()
    assert "ports" not in worker["containers"][0] or all(
        p["name"] == "ssh" for p in worker["containers"][0]["ports"]
    )
    assert children[2]["spec"]["selector"][LWS_WORKER_INDEX_LABEL] == "0"
    assert "prometheus.io/scrape" in template["leaderTemplate"]["metadata"]["annotations"]
    assert "annotations" not in template["workerTemplate"]["metadata"]


def test_exclusive_topology_and_surge_follow_the_spec_and_the_tier() -> None:
    model = parsed(spec(exclusiveTopology="turnpike.dev/pool"))
    lws = render_leaderworkerset(model, 1, surge=False)
    annotation = "leaderworkerset.sigs.k8s.io/exclusive-topology"
    assert lws["metadata"]["annotations"][annotation] == "turnpike.dev/pool"
    config = lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]
    assert config == {"maxSurge": 0, "maxUnavailable": 1}
    assert annotation not in (
        render_leaderworkerset(parsed(spec()), 1)["metadata"].get("annotations") or {}
    )


def test_a_single_node_spec_is_never_rendered_as_a_leaderworkerset() -> None:
    with pytest.raises(ValueError, match="nodesPerReplica above 1"):
        render_leaderworkerset(parsed(spec(8, 1, 1)), 1)


# --- the leader's launch, run by a real POSIX shell with stand-ins for ssh and mpirun --


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _launch(tmp_path: Path, ssh_exit: int, size: int = 3) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "record"
    _stub(bin_dir, "ssh", f'echo "ssh $*" >> {record}; exit {ssh_exit}')
    _stub(bin_dir, "sleep", "true")
    _stub(bin_dir, "mpirun", f'for a in "$@"; do echo "arg $a"; done >> {record}')
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "LWS_GROUP_SIZE": str(size),
        "LWS_LEADER_ADDRESS": "llama-0.llama.team-a",
        "LWS_WORKER_INDEX": "0",
        "TURNPIKE_RANKS_PER_NODE": "8",
        "OMPI_MCA_plm_rsh_args": "-p 2222",
        "HF_TOKEN": "secret-value",
        "HOSTNAME": "llama-0",
    }
    return subprocess.run(
        ["/bin/sh", "-c", LAUNCH_SCRIPT, "turnpike-launch", "mpirun", "-n", "1", "tritonserver"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_leader_waits_for_every_worker_then_runs_mpirun_over_the_group(
    tmp_path: Path,
) -> None:
    result = _launch(tmp_path, ssh_exit=0)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "record").read_text().splitlines()
    assert [line.split()[-2] for line in lines if line.startswith("ssh")] == [
        "llama-0-1.llama.team-a",
        "llama-0-2.llama.team-a",
    ]
    args = [line.removeprefix("arg ") for line in lines if line.startswith("arg ")]
    assert args[:2] == [
        "--host",
        "llama-0.llama.team-a:8,llama-0-1.llama.team-a:8,llama-0-2.llama.team-a:8",
    ]
    assert args[2:4] == ["-mca", "mca_base_env_list"]
    exported = set(args[4].split(";"))
    # The user's variables reach the remote ranks; the leader's identity and MPI's own do not.
    assert {"HF_TOKEN", "TURNPIKE_RANKS_PER_NODE", "PATH"} <= exported
    assert not exported & {
        "HOSTNAME",
        "LWS_GROUP_SIZE",
        "LWS_LEADER_ADDRESS",
        "OMPI_MCA_plm_rsh_args",
    }
    assert args[-3:] == ["-n", "1", "tritonserver"]
    assert "secret-value" not in result.stderr


def test_the_leader_gives_up_on_a_worker_that_never_answers(tmp_path: Path) -> None:
    result = _launch(tmp_path, ssh_exit=255, size=2)
    assert result.returncode == 1
    assert "worker llama-0-1.llama.team-a did not accept ssh on port 2222 after 120 tries" in (
        result.stderr
    )
    assert "arg " not in (tmp_path / "record").read_text()


# --- the ssh keys ------------------------------------------------------------------------


def test_generated_keys_survive_the_secret_and_are_valid_openssh_keys(tmp_path: Path) -> None:
    keys = generate_mpi_keys("team-a/llama")
    secret = render_mpi_secret(parsed(spec()), keys)
    assert keys_from_secret(secret) == keys
    files = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert files["known_hosts"] == f"* {keys.host_public}\n"
    assert files["authorized_keys"] == f"{keys.client_public}\n"
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    for private, public in (
        (keys.client_private, keys.client_public),
        (keys.host_private, keys.host_public),
    ):
        path = tmp_path / "key"
        path.write_text(private)
        os.chmod(path, 0o600)
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert derived[:2] == public.split()[:2]


def test_an_incomplete_secret_gets_a_fresh_key_set() -> None:
    secret = render_mpi_secret(parsed(spec()), KEYS)
    del secret["data"]["known_hosts"]
    assert keys_from_secret(secret) is None
    assert keys_from_secret(None) is None
    secret = render_mpi_secret(parsed(spec()), KEYS)
    secret["data"]["id_ed25519"] = "not base64!"
    assert keys_from_secret(secret) is None


# --- status ------------------------------------------------------------------------------


def pod(group: int, worker: int, uid: str, ready: bool = True, **status: Any) -> dict[str, Any]:
    name = f"{NAME}-{group}" + (f"-{worker}" if worker else "")
    return {
        "metadata": {
            "name": name,
            "uid": uid,
            "creationTimestamp": "2026-12-08T03:00:00Z",
            "labels": {LWS_GROUP_INDEX_LABEL: str(group), LWS_WORKER_INDEX_LABEL: str(worker)},
        },
        "status": {
            "phase": "Running",
            "podIP": f"198.18.1.{group * 10 + worker + 2}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            **status,
        },
    }


def test_groups_report_which_pod_holds_a_group_back() -> None:
    waiting = {
        "containerStatuses": [
            {"name": "mpi-worker", "state": {"waiting": {"reason": "ImagePullBackOff"}}}
        ]
    }
    pods = [pod(0, 0, "a"), pod(0, 1, "b"), pod(1, 0, "c"), pod(1, 1, "d", False, **waiting)]
    groups, restarted = group_statuses(None, pods, "2026-12-08T03:01:00Z", 2)
    assert restarted == []
    assert [(g.index, g.ready, g.pods_ready, g.pods) for g in groups] == [
        (0, True, 2, 2),
        (1, False, 1, 2),
    ]
    assert groups[1].waiting_on == (f"{NAME}-1-1 (worker 1): container mpi-worker ImagePullBackOff")
    assert group_holdup(groups) == (
        f"group 1 (1/2 pods ready) waits on pod {NAME}-1-1 (worker 1): "
        "container mpi-worker ImagePullBackOff"
    )


def test_a_new_leader_under_a_known_group_counts_as_a_restart() -> None:
    before, _ = group_statuses(None, [pod(0, 0, "a"), pod(0, 1, "b")], "t0", 1)
    # The old pods are being deleted: the group keeps its identity meanwhile.
    going = [
        {**p, "metadata": {**p["metadata"], "deletionTimestamp": "t1"}}
        for p in (pod(0, 0, "a"), pod(0, 1, "b"))
    ]
    during, restarted = group_statuses(before, going, "t1", 1)
    assert restarted == [] and during[0].restarts == 0 and not during[0].ready
    assert group_holdup(during) == (
        "group 0 (0/0 pods ready) waits on no pod yet: the group is being created"
    )
    after, restarted = group_statuses(during, [pod(0, 0, "e", False), pod(0, 1, "f")], "t2", 1)
    assert after[0].restarts == 1 and after[0].last_restart == "t2"
    assert after[0].leader_uid == "e"
    assert restarted and restarted[0].startswith("group 0 was recreated")
    again, restarted = group_statuses(after, [pod(0, 0, "e"), pod(0, 1, "f")], "t3", 1)
    assert restarted == [] and again[0].restarts == 1 and again[0].ready
    # Scaled to zero: the group is gone from status with its pods.
    assert group_statuses(again, [], "t4", 0) == ([], [])


def test_a_leaderworkerset_rollout_counts_groups_and_an_apply_makes_it_stale() -> None:
    lws = {
        "kind": "LeaderWorkerSet",
        "metadata": {"generation": 4},
        "spec": {"replicas": 2},
        "status": {"replicas": 2, "readyReplicas": 1, "updatedReplicas": 2},
    }
    rollout = rollout_of(lws, 2)
    assert rollout is not None
    assert (rollout.ready, rollout.updated, rollout.current_generation) == (1, 2, True)
    scaled = {**lws, "spec": {"replicas": 3}}
    rollout = rollout_of(scaled, 3)
    assert rollout is not None and not rollout.current_generation
    desired = {**lws, "spec": {"replicas": 2, "template": "new"}}
    applied = after_apply(desired, lws)
    assert applied["status"] == {} and applied["metadata"]["generation"] == 5
    rollout = rollout_of(applied, 2)
    assert rollout is not None and not rollout.current_generation


def test_capacity_counts_a_surging_leaderworkerset_rollout() -> None:
    lws: dict[str, Any] = {
        "kind": "LeaderWorkerSet",
        "spec": {
            "replicas": 2,
            "rolloutStrategy": {"rollingUpdateConfiguration": {"maxSurge": 1}},
        },
        "status": {"replicas": 3, "updatedReplicas": 1, "readyReplicas": 2},
    }
    assert surges(lws) and rolling(lws)
    lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]["maxSurge"] = 0
    assert not surges(lws) and not rolling(lws)
    # LWS's own default is no surge.
    assert not surges({"kind": "LeaderWorkerSet", "spec": {"replicas": 2}})


def test_only_leaders_are_scraped_and_routed_to() -> None:
    pods = [pod(0, 0, "a"), pod(0, 1, "b")]
    for p in pods:
        p["metadata"]["namespace"] = NAMESPACE
        p["metadata"]["labels"]["turnpike.dev/model-deployment"] = NAME
    targets, starting = split_pods(pods)
    assert [t.name for t in targets] == [f"{NAME}-0"] and starting == 0
    assert endpoint_from(pods[0]) is not None
    assert endpoint_from(pods[1]) is None


# --- the reconciler on the in-memory API server ----------------------------------------


def reconcile(kube: FakeKube, *, leaderworkersets: bool = True) -> None:
    async def run() -> None:
        cache = cache_fed_by(kube)
        cache.leaderworkersets = leaderworkersets
        reconciler = ModelDeploymentReconciler(cast(Kube, kube), Metrics(), cache=cache)
        await reconciler.reconcile((NAMESPACE, NAME))

    asyncio.run(run())


def test_a_multi_node_deployment_gets_its_keys_once_and_a_leaderworkerset() -> None:
    kube = FakeKube()
    kube.put(md().spec(**spec()).build())
    reconcile(kube)
    kinds = [c["kind"] for c in kube.applied]
    assert kinds == ["Secret", "LeaderWorkerSet", "Service", "PodDisruptionBudget"]
    secret = kube.objects[("Secret", NAMESPACE, f"{NAME}-mpi")]
    kube.applied.clear()
    reconcile(kube)
    assert kube.applied == []  # the keys are read back, not generated again
    assert kube.objects[("Secret", NAMESPACE, f"{NAME}-mpi")]["data"] == secret["data"]
    status = kube.status("ModelDeployment", NAMESPACE, NAME)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "LeaderWorkerSet" not in ready["reason"]


def test_without_the_leaderworkerset_api_the_deployment_says_so() -> None:
    kube = FakeKube()
    kube.put(md().spec(**spec()).build())
    reconcile(kube, leaderworkersets=False)
    assert kube.applied == []
    status = kube.status("ModelDeployment", NAMESPACE, NAME)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "LeaderWorkerSetMissing"


def test_group_status_round_trips_through_the_api_model() -> None:
    group = Group(index=0, ready=False, pods=2, pods_ready=1, waiting_on="x (worker 1): y")
    assert group.to_k8s() == {
        "index": 0,
        "ready": False,
        "pods": 2,
        "podsReady": 1,
        "restarts": 0,
        "waitingOn": "x (worker 1): y",
    }


def test_a_secret_of_that_name_the_deployment_does_not_own_is_left_alone() -> None:
    kube = FakeKube()
    kube.put(md().spec(**spec()).build())
    users = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": NAMESPACE, "name": f"{NAME}-mpi"},
        "data": {"token": "c2VjcmV0"},
    }
    kube.put(users)
    reconcile(kube)
    assert [c["kind"] for c in kube.applied if c["kind"] == "Secret"] == []
    assert kube.objects[("Secret", NAMESPACE, f"{NAME}-mpi")]["data"] == {"token": "c2VjcmV0"}
    status = kube.status("ModelDeployment", NAMESPACE, NAME)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "SecretNameTaken"


@given(st.text(min_size=1, max_size=253))
@settings(max_examples=200, deadline=None)
def test_the_leaders_service_name_is_valid_and_reserved(name: str) -> None:
    """Beside LWS's headless Service (named after the set, so after the deployment),
    the Service clients use has a derived name no other deployment's child can have."""
    from turnpike.render.names import child_name, is_dns1035_label, looks_derived, role_name

    serving = role_name(name, "serving")
    assert is_dns1035_label(serving) and looks_derived(serving)
    assert serving != child_name(name)


def test_the_service_of_a_multi_node_deployment_is_not_the_headless_one() -> None:
    from turnpike.render.service import endpoint, render_service

    model = parsed(spec())
    service = render_service(model)
    assert service["metadata"]["name"].startswith(f"{NAME}-serving-")
    assert service["metadata"]["name"] != NAME  # LWS's headless Service takes NAME
    assert endpoint(model) == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:8000"
    assert render_service(parsed(spec(8, 1, 1)))["metadata"]["name"] == NAME


def test_a_layout_switch_that_slipped_past_admission_keeps_serving_until_the_new_one_does() -> None:
    """Admission refuses changing gpu.nodesPerReplica in place. Should an object
    cross the boundary anyway (restored from a backup, written before the rule),
    the operator starts the LeaderWorkerSet beside the running Deployment and
    removes the Deployment and its Service only once every group serves."""
    from tests.unit.builders import deployment

    kube = FakeKube()
    kube.put(md().spec(**spec()).build())
    kube.put(deployment(1).build())
    old_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "namespace": NAMESPACE,
            "name": NAME,
            "ownerReferences": [
                {"kind": "ModelDeployment", "name": NAME, "uid": f"uid-{NAME}", "controller": True}
            ],
        },
        "spec": {"selector": {"turnpike.dev/model-deployment": NAME}},
    }
    kube.put(old_service)
    reconcile(kube)
    assert ("LeaderWorkerSet", NAMESPACE, NAME) in kube.objects
    assert kube.deleted == []  # the Deployment serves until the groups do

    lws = kube.objects[("LeaderWorkerSet", NAMESPACE, NAME)]
    kube.put({**lws, "status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}})
    reconcile(kube)
    assert sorted(kube.deleted) == [("Deployment", NAMESPACE, NAME), ("Service", NAMESPACE, NAME)]


def test_the_key_secret_is_read_once_per_resync_not_on_every_tick() -> None:
    """An autoscaled multi-node deployment reconciles every scrape interval; its
    key Secret (not watched) is read again only once per resync period."""
    from datetime import UTC, datetime, timedelta

    kube = FakeKube()
    kube.put(md().spec(**spec()).build())
    now = [datetime(2026, 12, 8, 4, 0, tzinfo=UTC)]

    async def run() -> list[str]:
        cache = cache_fed_by(kube)
        reconciler = ModelDeploymentReconciler(
            cast(Kube, kube), Metrics(), cache=cache, clock=lambda: now[0], resync_seconds=60
        )
        gets: list[str] = []
        original = kube.get

        async def counted(resource: Any, namespace: Any, name: str) -> Any:
            if resource.kind == "Secret":
                gets.append(name)
            return await original(resource, namespace, name)

        kube.get = counted  # type: ignore[method-assign]
        for step in range(5):  # created, then four ticks 2 s apart
            now[0] += timedelta(seconds=2 if step else 0)
            await reconciler.reconcile((NAMESPACE, NAME))
        now[0] += timedelta(seconds=60)
        await reconciler.reconcile((NAMESPACE, NAME))
        return gets

    gets = asyncio.run(run())
    # Missing at creation (read), found once it was applied (read), held for the
    # ticks, read again after a resync period.
    assert gets == [f"{NAME}-mpi"] * 3
