"""The LeaderWorkerSet that runs a ModelDeployment whose replicas span nodes.

One replica is one LWS group of ``gpu.nodesPerReplica`` pods, one per node,
each holding that node's share of the replica's GPUs. TensorRT-LLM runs a
replica as one MPI program with one Triton rank per GPU (see
:mod:`turnpike.render.command`), the way its multi-node guide launches it:

- every pod of the group gets the model (the same download or volume as a
  single-node replica) and an ssh key set from the ModelDeployment's Secret
  (:mod:`turnpike.render.mpikeys`);
- workers run ``sshd`` as the unprivileged Triton user on :data:`SSH_PORT` and
  nothing else; they serve no request themselves;
- the leader waits (bounded) until every worker's sshd answers, then runs
  ``mpirun`` over the group: ranks 0 to g−1 on itself, the next g on worker 1,
  and so on (g GPUs per node); rank 0 serves HTTP, gRPC and metrics, so the
  leader carries the probes, the ports and the scrape annotations, and only
  leaders are selected by the Service (worker-index 0).

The group restarts as a unit (``RecreateGroupOnPodRestart``): MPI cannot lose a
rank and go on. Addresses come from LWS: ``LWS_LEADER_ADDRESS`` is
``<set>-<group>.<set>.<namespace>`` and worker i of that group is
``<set>-<group>-<i>.<set>.<namespace>`` (the headless Service LWS creates; it
needs cluster DNS, as every LWS workload does).
"""

from __future__ import annotations

import json
from typing import Any

from turnpike.api.constants import LWS_API_VERSION
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.render.command import triton_command
from turnpike.render.deployment import (
    CONTAINER,
    IN_PLACE_ROLLOUT,
    SURGE_ROLLOUT,
    pod_spec,
    scrape_annotations,
)
from turnpike.render.expansion import literal
from turnpike.render.labels import common_labels, object_meta
from turnpike.render.mpikeys import (
    KEYS_MOUNT,
    KEYS_VOLUME,
    SSH_PORT,
    keys_volume,
    secret_name,
    sshd_command,
)
from turnpike.render.names import child_name
from turnpike.render.repository import plan_repository

API_VERSION = LWS_API_VERSION
KIND = "LeaderWorkerSet"
# An annotation of the LWS API (sigs.k8s.io/lws api/leaderworkerset/v1).
EXCLUSIVE_TOPOLOGY = "leaderworkerset.sigs.k8s.io/exclusive-topology"

WORKER_CONTAINER = "mpi-worker"
SSH_PORT_NAME = "ssh"
# The leader tries each worker's sshd this many times, SSH_RETRY_SECONDS apart
# (plus up to 5 s of connect timeout each), before it gives up and the group is
# recreated: at most 14 minutes, inside the startup probe's half hour, for
# workers still pulling the image or the model.
SSH_TRIES = 120
SSH_RETRY_SECONDS = 2

# The leader's entrypoint: find the group's hosts, wait for their sshd, run mpirun.
# "$@" is the mpirun command line the renderer built; it is passed as arguments,
# never parsed by the shell, so nothing a user wrote is ever shell code. Every
# variable of the leader's environment is forwarded to the ranks on the workers
# (an ssh session starts from sshd's, with a PATH that lacks the image's own),
# except those that describe the leader itself or MPI's own (mpirun passes its
# MCA parameters on by itself). mca_base_env_list, not -x: in an MPMD command
# line a -x before the first block reaches only that block's rank.
LAUNCH_SCRIPT = f"""set -eu
size="${{LWS_GROUP_SIZE:?LWS_GROUP_SIZE is unset: is the LeaderWorkerSet controller installed?}}"
leader="${{LWS_LEADER_ADDRESS:?LWS_LEADER_ADDRESS is unset}}"
slots="${{TURNPIKE_RANKS_PER_NODE:?}}"
first="${{leader%%.*}}"
domain="${{leader#*.}}"
hosts="$leader:$slots"
i=1
while [ "$i" -lt "$size" ]; do
  worker="$first-$i.$domain"
  hosts="$hosts,$worker:$slots"
  tries=0
  until error=$(ssh $OMPI_MCA_plm_rsh_args -o ConnectTimeout=5 "$worker" true 2>&1); do
    tries=$((tries + 1))
    if [ "$tries" -ge {SSH_TRIES} ]; then
      echo "turnpike: worker $worker did not accept ssh on port {SSH_PORT}" \\
        "after $tries tries: $error" >&2
      exit 1
    fi
    if [ "$tries" -eq 1 ]; then
      echo "turnpike: waiting for worker $worker: $error" >&2
    fi
    sleep {SSH_RETRY_SECONDS}
  done
  i=$((i + 1))
done
forward=$(env | sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*/\\1/p' \\
  | grep -Ev '^(HOSTNAME|HOME|PWD|OLDPWD|SHLVL|_|OMPI_.*|PMIX_.*|PRTE_.*|LWS_.*)$' \\
  | sort -u | tr '\\n' ';' | sed 's/;$//')
echo "turnpike: launching $((size * slots)) ranks on $hosts" >&2
program="$1"
shift
exec "$program" --host "$hosts" -mca mca_base_env_list "$forward" "$@"
"""
LAUNCH_NAME = "turnpike-launch"


def ssh_options() -> str:
    """The ssh client's options, for the leader's wait and for mpirun's rsh agent
    (no quoting inside: Open MPI splits them on spaces)."""
    return " ".join(
        [
            f"-p {SSH_PORT}",
            f"-i {KEYS_MOUNT}/id_ed25519",
            f"-o UserKnownHostsFile={KEYS_MOUNT}/known_hosts",
            "-o StrictHostKeyChecking=yes",
            "-o BatchMode=yes",
        ]
    )


def _keys_mount() -> dict[str, Any]:
    return {"name": KEYS_VOLUME, "mountPath": KEYS_MOUNT, "readOnly": True}


def _copy(tree: dict[str, Any]) -> dict[str, Any]:
    fresh: dict[str, Any] = json.loads(json.dumps(tree))
    return fresh


def _leader(md: ModelDeployment, base: dict[str, Any]) -> dict[str, Any]:
    spec = _copy(base)
    triton = spec["containers"][0]
    argv = triton_command(md, _repository(md))
    # Escaped like a user string: the script's own $( ... ) must reach the shell
    # as written, not be read by the kubelet as $(VAR) references.
    triton["command"] = ["/bin/sh", "-c", literal(LAUNCH_SCRIPT), LAUNCH_NAME]
    triton["args"] = argv
    triton["env"] = [
        *triton["env"],
        {"name": "TURNPIKE_RANKS_PER_NODE", "value": str(md.spec.gpu.per_node)},
        # mpirun reads its MCA parameters from OMPI_MCA_*: ranks on other nodes
        # are started over ssh with the Secret's keys.
        {"name": "OMPI_MCA_plm_rsh_agent", "value": "ssh"},
        {"name": "OMPI_MCA_plm_rsh_args", "value": ssh_options()},
        # The leader starts every worker's daemon itself (no daemon sshes onward).
        {"name": "OMPI_MCA_plm_rsh_no_tree_spawn", "value": "1"},
        # Keep the group's DNS names whole: shortened to their first label
        # (Open MPI's default) they no longer resolve.
        {"name": "OMPI_MCA_orte_keep_fqdn_hostnames", "value": "1"},
    ]
    triton["volumeMounts"] = sorted(
        [*triton["volumeMounts"], _keys_mount()], key=lambda m: m["mountPath"]
    )
    spec["volumes"] = sorted([*spec["volumes"], keys_volume(md)], key=lambda v: v["name"])
    return spec


def _worker(md: ModelDeployment, base: dict[str, Any]) -> dict[str, Any]:
    """The leader's pod less what serving needs (ports, HTTP probes, the drain
    delay), running sshd instead: the ranks mpirun starts here are its sessions."""
    spec = _copy(base)
    triton = spec["containers"][0]
    worker = {
        "name": WORKER_CONTAINER,
        "image": triton["image"],
        "command": sshd_command(),
        "env": triton["env"],
        "envFrom": triton["envFrom"],
        "ports": [{"name": SSH_PORT_NAME, "containerPort": SSH_PORT, "protocol": "TCP"}],
        # No probe: a TCP probe of sshd logs a failed handshake twice a period, and
        # the leader's own wait is the check that matters (it logs in). A worker
        # whose sshd exits restarts its group.
        "resources": triton["resources"],
        "securityContext": triton["securityContext"],
        "volumeMounts": sorted(
            [*triton["volumeMounts"], _keys_mount()], key=lambda m: m["mountPath"]
        ),
    }
    spec["containers"] = [worker]
    spec["volumes"] = sorted([*spec["volumes"], keys_volume(md)], key=lambda v: v["name"])
    return spec


def _repository(md: ModelDeployment) -> str:
    return plan_repository(md.spec.model).path


def render_leaderworkerset(
    md: ModelDeployment,
    replicas: int,
    priority_class: str | None = None,
    extra_node_selector: dict[str, str] | None = None,
    extra_tolerations: list[dict[str, Any]] | None = None,
    surge: bool = True,
) -> dict[str, Any]:
    """The LeaderWorkerSet for ``md`` at ``replicas`` groups (arguments as for
    :func:`turnpike.render.deployment.render_deployment`; a surge adds one group).

    ``gpu.exclusiveTopology``, when set, names the node label of the group's
    interconnect domain: LWS keeps a group inside one domain and each domain to
    one group.
    """
    if replicas < 0:
        raise ValueError(f"replicas must not be negative, got {replicas}")
    if not md.spec.gpu.multi_node:
        raise ValueError("a LeaderWorkerSet is rendered only for gpu.nodesPerReplica above 1")
    name = child_name(md.metadata.name)
    base = pod_spec(
        md, plan_repository(md.spec.model), priority_class, extra_node_selector, extra_tolerations
    )
    metadata = object_meta(md, name)
    topology = md.spec.gpu.exclusive_topology
    if topology:
        metadata["annotations"] = {EXCLUSIVE_TOPOLOGY: topology}
    rollout = SURGE_ROLLOUT if surge else IN_PLACE_ROLLOUT
    lws: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            # Workers start with the leader, which waits for their sshd.
            "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": dict(rollout),
            },
            "leaderWorkerTemplate": {
                "size": md.spec.gpu.nodes_per_replica,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": {
                        "labels": common_labels(md),
                        "annotations": scrape_annotations(),
                    },
                    "spec": _leader(md, base),
                },
                "workerTemplate": {
                    "metadata": {"labels": common_labels(md)},
                    "spec": _worker(md, base),
                },
            },
        },
    }
    return _copy(lws)


__all__ = [
    "API_VERSION",
    "CONTAINER",
    "KIND",
    "render_leaderworkerset",
    "secret_name",
]
