"""status.groups: each LeaderWorkerSet group of a multi-node ModelDeployment.

A group is one replica spread over several pods. LWS restarts it as a unit
(``RecreateGroupOnPodRestart``): when any pod fails or is deleted, the leader is
deleted and the whole group comes back with new pods. The LWS status counts
ready groups only; users need which group is down, which pod holds it back,
and whether it keeps restarting. A restart shows as a new leader pod (a new
uid) under a group index the previous status already had.
"""

from __future__ import annotations

from typing import Any

from turnpike.api.constants import LWS_GROUP_INDEX_LABEL as GROUP_INDEX_LABEL
from turnpike.api.constants import LWS_WORKER_INDEX_LABEL as WORKER_INDEX_LABEL
from turnpike.api.status import MAX_CONDITION_MESSAGE, Group
from turnpike.status.conditions import truncated


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def why_not_ready(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return f"not scheduled ({c.get('reason', 'Pending')}: {c.get('message', '')})"
    for container in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        state = container.get("state") or {}
        if "waiting" in state:
            waiting = state["waiting"]
            detail = waiting.get("message") or ""
            return f"container {container.get('name')} {waiting.get('reason', 'waiting')}" + (
                f": {detail}" if detail else ""
            )
        if "terminated" in state:
            reason = state["terminated"].get("reason", "")
            return f"container {container.get('name')} exited ({reason})"
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "being deleted"
    return f"{status.get('phase', 'Pending')}, not ready"


def worker_index(pod: dict[str, Any]) -> int:
    value = str(((pod.get("metadata") or {}).get("labels") or {}).get(WORKER_INDEX_LABEL, "0"))
    return int(value) if value.isdigit() else 0


MAX_GROUPS = 100
MAX_WAITING_ON = 1024


def _labels(pod: dict[str, Any]) -> dict[str, Any]:
    return (pod.get("metadata") or {}).get("labels") or {}


def group_statuses(
    previous: list[Group] | None, pods: list[dict[str, Any]], now: str, replicas: int
) -> tuple[list[Group], list[str]]:
    """The groups as the pods show them, and a message per group that restarted
    since ``previous``. Pods being deleted are left out (a restarting group's old
    pods), so a group shows its new incarnation as soon as it exists; a wanted
    group (index below ``replicas``) with no pod left keeps its history."""
    before = {g.index: g for g in previous or []}
    members: dict[int, list[dict[str, Any]]] = {}
    for pod in pods:
        value = str(_labels(pod).get(GROUP_INDEX_LABEL, ""))
        if value.isdigit() and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            members.setdefault(int(value), []).append(pod)
    for index in before:
        if index < replicas:
            members.setdefault(index, [])
    groups: list[Group] = []
    restarted: list[str] = []
    for index in sorted(members)[:MAX_GROUPS]:
        group_pods = sorted(members[index], key=worker_index)
        leader = next((p for p in group_pods if worker_index(p) == 0), None)
        meta = (leader or {}).get("metadata") or {}
        uid = meta.get("uid")
        old = before.get(index)
        restarts = old.restarts if old is not None else 0
        last_restart = old.last_restart if old is not None else None
        if old is not None and uid is None:
            uid = old.leader_uid  # the leader is being replaced: keep the old identity
        elif old is not None and old.leader_uid is not None and uid != old.leader_uid:
            restarts += 1
            last_restart = now
            restarted.append(
                f"group {index} was recreated (its leader is now {meta.get('name')}): a pod "
                "of the group failed or was deleted, and LeaderWorkerSet restarts a group "
                "as a unit"
            )
        ready_pods = [p for p in group_pods if pod_ready(p)]
        waiting = next((p for p in group_pods if not pod_ready(p)), None)
        waiting_on = None
        if not group_pods:
            waiting_on = "no pod yet: the group is being created"
        elif waiting is not None:
            worker = worker_index(waiting)
            role = "leader" if worker == 0 else f"worker {worker}"
            name = (waiting.get("metadata") or {}).get("name")
            waiting_on = truncated(f"{name} ({role}): {why_not_ready(waiting)}", MAX_WAITING_ON)
        groups.append(
            Group(
                index=index,
                ready=bool(group_pods) and waiting is None and leader is not None,
                pods_ready=len(ready_pods),
                pods=len(group_pods),
                leader=meta.get("name") or (old.leader if old is not None else None),
                leader_uid=uid,
                since=meta.get("creationTimestamp") or (old.since if old is not None else None),
                restarts=restarts,
                last_restart=last_restart,
                waiting_on=waiting_on,
            )
        )
    return groups, [truncated(m, MAX_CONDITION_MESSAGE) for m in restarted]


def group_holdup(groups: list[Group]) -> str | None:
    """Which pod holds each unready group back, and why (for the Ready condition)."""
    parts = [
        f"group {g.index} ({g.pods_ready}/{g.pods} pods ready) waits on "
        + (f"pod {g.waiting_on}" if g.pods else g.waiting_on)
        for g in groups
        if not g.ready and g.waiting_on
    ]
    return "; ".join(parts) or None
