"""What the operator has seen, kept current by kopf's watch events.

Capacity accounting needs every ModelDeployment of a tier and each one's
Deployment at every evaluation; reading them from the API server each time
would cost O(n) requests per reconcile. The cache is primed by one LIST per
kind before the workers start (so the first evaluation already sees every
consumer) and written through by the reconciler right after it applies a
Deployment, so serialized evaluations of one tier never see stale grants.

Reconciles read children from here too, as controller-runtime reads from its
informers. That view is fed by the watch alone, never by our own write
responses: the watch delivers each object's changes in order, so its last
event is the truth, while an apply's response can arrive after newer events
(kube-controller-manager marking the new Deployment ready) and would leave an
old object behind with nothing left to correct it. A child the watch has not
shown yet is applied again, which a server-side apply makes harmless.

Every change of a ModelDeployment, its Deployment or a tier also updates the
GPUs each consumer holds in its tier (:class:`TierAccounts`), so a capacity
evaluation reads a sum instead of walking the fleet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from turnpike.api.capacitytier import CapacityTier
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.capacity import held_by, resolve_tier
from turnpike.capacity.accounts import Share, TierAccounts
from turnpike.capacity.consumers import consumer
from turnpike.kube import ApiError, KubeAPI
from turnpike.kube.resources import (
    CAPACITY_TIER,
    DEPLOYMENT,
    LEADER_WORKER_SET,
    MODEL_DEPLOYMENT,
    PDB,
    SERVICE,
    Resource,
)
from turnpike.reconcile.children import WORKLOAD_KINDS
from turnpike.render.deployment import GPU_RESOURCE
from turnpike.render.labels import LABEL_MANAGED_BY, LABEL_MODEL_DEPLOYMENT, MANAGER
from turnpike.render.names import child_name, label_value

Key = tuple[str, str]
ChildKey = tuple[str, str, str]  # kind, namespace, name
CHILD_RESOURCES = (DEPLOYMENT, SERVICE, PDB)
# Children whose API is optional: LeaderWorkerSets exist only where the LWS
# controller is installed (multi-node replicas need it).
OPTIONAL_CHILD_RESOURCES = (LEADER_WORKER_SET,)


def owner_key(body: dict[str, Any]) -> Key | None:
    """The ModelDeployment that controls a child, if any."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "ModelDeployment":
            return body["metadata"]["namespace"], ref["name"]
    return None


@dataclass
class Cache:
    models: dict[Key, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[Key, dict[str, Any]] = field(default_factory=dict)
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: dict[ChildKey, dict[str, Any]] = field(default_factory=dict)
    # The resourceVersion each ModelDeployment got from our own last status write:
    # its watch event carries nothing new, so it need not queue another reconcile.
    _own_writes: dict[Key, str] = field(default_factory=dict)
    # Parsed specs by resourceVersion: every tier evaluation reads all of a tier's
    # consumers, and parsing each one again would make a reconcile O(n) in pydantic.
    _parsed: dict[Key, tuple[str, ModelDeployment | None]] = field(default_factory=dict)
    # The tier a ModelDeployment that names none belongs to (--default-tier).
    default_tier: str | None = None
    # Whether the cluster serves the LeaderWorkerSet API (found by prime()).
    leaderworkersets: bool = False
    accounts: TierAccounts = field(default_factory=TierAccounts)
    _tiers_parsed: list[CapacityTier] = field(default_factory=list)
    # Children by the ModelDeployment that controls them, for the delete path.
    _owned: dict[Key, set[ChildKey]] = field(default_factory=dict)
    _owner_of: dict[ChildKey, Key] = field(default_factory=dict)
    # Deployments being applied, as they will be: counted in the tier's sums from
    # the moment the grant is decided until the apply has answered.
    _granting: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def granting(self, key: Key, deployment: dict[str, Any]) -> None:
        """A grant decided under the tier's lock, before its apply is sent."""
        self._granting[key] = deployment
        self._reaccount(key)

    def granted(self, key: Key, applied: dict[str, Any] | None) -> None:
        """The apply answered (``applied``) or failed (None): the server is the truth."""
        self._granting.pop(key, None)
        if applied is not None:
            self.deployment_seen("MODIFIED", applied)
        else:
            self._reaccount(key)

    # Pods by namespace and the ModelDeployment label, trimmed to what the
    # autoscaler and status read; fed by PodReflector once pods_synced is set.
    _pods: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _pod_group: dict[Key, Key] = field(default_factory=dict)  # (ns, pod) -> group
    # Namespaces (None: all) whose pod LIST has not landed yet.
    _pod_scopes: set[str | None] | None = None
    # Told of every change to a group's pods as the watch delivers it (the GPU meter
    # counts a Ready transition at that moment, not at the next reconcile), and of
    # every ModelDeployment deleted (the work queue forgets those keys).
    on_pods_changed: Callable[[Key], None] | None = None
    on_model_deleted: Callable[[Key], None] | None = None
    # Groups a relist touched, told once it has landed (None: not relisting).
    _pods_batch: set[Key] | None = None

    def expect_pods(self, scopes: tuple[str | None, ...]) -> None:
        """Pods will come from reflectors of these scopes (see PodReflector)."""
        self._pod_scopes = set(scopes)

    @property
    def pods_synced(self) -> bool:
        return self._pod_scopes is not None and not self._pod_scopes

    def pod_seen(self, event: str, body: dict[str, Any]) -> None:
        metadata = body["metadata"]
        pod_key = (metadata["namespace"], metadata["name"])
        old_group = self._pod_group.pop(pod_key, None)
        if old_group is not None:
            members = self._pods.get(old_group, {})
            members.pop(metadata["name"], None)
            if not members:
                self._pods.pop(old_group, None)
        group_label = (metadata.get("labels") or {}).get(LABEL_MODEL_DEPLOYMENT)
        group = (metadata["namespace"], group_label) if group_label is not None else None
        if event != "DELETED" and group is not None:
            self._pod_group[pod_key] = group
            self._pods.setdefault(group, {})[metadata["name"]] = trimmed_pod(body)
        self._pods_changed({g for g in (old_group, group) if g is not None})

    def _pods_changed(self, groups: set[Key]) -> None:
        if self._pods_batch is not None:
            self._pods_batch |= groups
        elif self.on_pods_changed is not None:
            for group in sorted(groups):
                self.on_pods_changed(group)

    def replace_pods(self, bodies: list[dict[str, Any]], namespace: str | None = None) -> None:
        """A fresh LIST of ``namespace`` (None: all): forget its pods and take these.
        Listeners hear of each group once, after, so a pod that is in both the old
        and the new view never looks gone for a moment."""
        self._pods_batch = set()
        try:
            for pod_key in [k for k in self._pod_group if namespace in (None, k[0])]:
                self.pod_seen(
                    "DELETED", {"metadata": {"namespace": pod_key[0], "name": pod_key[1]}}
                )
            for body in bodies:
                self.pod_seen("ADDED", body)
        finally:
            touched, self._pods_batch = self._pods_batch, None
        if self._pod_scopes is not None:
            self._pod_scopes.discard(namespace)
        self._pods_changed(touched)

    def pods_of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The pods of ModelDeployment ``name`` (its selector's label), by name."""
        members = self._pods.get((namespace, label_value(name)), {})
        return [members[n] for n in sorted(members)]

    def parsed_tiers(self) -> list[CapacityTier]:
        """Every valid tier (admission refuses invalid ones; a stale one is skipped)."""
        return list(self._tiers_parsed)

    def owned_children(self, key: Key) -> list[dict[str, Any]]:
        """Every cached child whose controller is the ModelDeployment ``key``."""
        return [self.children[c] for c in sorted(self._owned.get(key, ())) if c in self.children]

    def _share(self, key: Key) -> Share | None:
        body = self.models.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        md = self.parsed_model(key)
        if md is None:
            return None
        tier = resolve_tier(md.spec.tier or self.default_tier, self._tiers_parsed).tier
        if tier is None:
            return None
        created = str(body["metadata"].get("creationTimestamp", "1970-01-01T00:00:00Z"))
        deployment = self._granting.get(key) or self.deployments.get(key)
        pool, gpus = held_by(tier, consumer(md, created, deployment))
        return Share(tier.name, pool, gpus)

    def _reaccount(self, key: Key) -> None:
        self.accounts.record(key, self._share(key))

    @staticmethod
    def _parse_tiers(bodies: list[dict[str, Any]]) -> list[CapacityTier]:
        parsed = []
        for body in bodies:
            try:
                parsed.append(CapacityTier.from_k8s(body))
            except ValidationError:
                continue  # admission refuses these; a stale one must not stop the others
        return parsed

    def reaccount_all(self) -> None:
        """A tier changed (budget, pools, default): every share may move."""
        self._tiers_parsed = self._parse_tiers(list(self.tiers.values()))
        self.accounts = TierAccounts()
        for key in self.models:
            self._reaccount(key)

    def parsed_model(self, key: Key) -> ModelDeployment | None:
        """The cached object as a ModelDeployment, or None when it is invalid."""
        body = self.models.get(key)
        if body is None:
            return None
        version = str(body["metadata"].get("resourceVersion", ""))
        hit = self._parsed.get(key)
        if hit is None or hit[0] != version:
            try:
                hit = (version, ModelDeployment.from_k8s(body))
            except ValidationError:
                hit = (version, None)
            self._parsed[key] = hit
        return hit[1]

    async def prime(self, kube: KubeAPI, namespaces: tuple[str, ...] = ()) -> None:
        """One LIST per kind (per watched namespace when the operator is scoped)."""
        scopes: tuple[str | None, ...] = namespaces or (None,)
        selector = f"{LABEL_MANAGED_BY}={MANAGER}"
        for namespace in scopes:
            for body in await kube.list(MODEL_DEPLOYMENT, namespace):
                self.model_seen("ADDED", _typed(body, MODEL_DEPLOYMENT))
            for resource in CHILD_RESOURCES:
                for body in await kube.list(resource, namespace, label_selector=selector):
                    # A LIST's items carry no kind; the watch events that follow do.
                    self.child_seen("ADDED", _typed(body, resource))
            for resource in OPTIONAL_CHILD_RESOURCES:
                try:
                    bodies = await kube.list(resource, namespace, label_selector=selector)
                except ApiError as error:
                    if not error.not_found:
                        raise
                    continue  # not installed: multi-node ModelDeployments say so
                self.leaderworkersets = True
                for body in bodies:
                    self.child_seen("ADDED", _typed(body, resource))
        try:
            tiers = await kube.list(CAPACITY_TIER)
        except ApiError as error:
            if not error.not_found:  # the CapacityTier CRD is optional
                raise
            tiers = []
        for body in tiers:
            self.tier_seen("ADDED", body)

    def model_seen(self, event: str, body: dict[str, Any]) -> None:
        body = without_managed_fields(body)
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if event == "DELETED":
            self.models.pop(key, None)
            self._parsed.pop(key, None)
            self._own_writes.pop(key, None)
            if self.on_model_deleted is not None:
                self.on_model_deleted(key)
        else:
            self.models[key] = body
        self._reaccount(key)

    def child_seen(self, event: str, body: dict[str, Any]) -> None:
        """A Deployment (or LeaderWorkerSet), Service or PodDisruptionBudget Turnpike manages."""
        body = without_managed_fields(body)
        metadata = body["metadata"]
        key = (body["kind"], metadata["namespace"], metadata["name"])
        previous_owner = self._owner_of.pop(key, None)
        if previous_owner is not None:  # an owner reference can change
            owned = self._owned.get(previous_owner, set())
            owned.discard(key)
            if not owned:
                self._owned.pop(previous_owner, None)
        if event == "DELETED":
            self.children.pop(key, None)
        else:
            self.children[key] = body
            owner = owner_key(body)
            if owner is not None:
                self._owner_of[key] = owner
                self._owned.setdefault(owner, set()).add(key)
        if body["kind"] in WORKLOAD_KINDS:
            self.deployment_seen(event, body)

    def child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.children.get((kind, namespace, name))

    def status_written(self, key: Key, body: dict[str, Any]) -> None:
        """Remember the object our own status patch produced, and read it from now
        on (unless the watch already showed a newer one): the next reconcile must
        start from the status just written, not from the one before it."""
        body = without_managed_fields(body)
        self._own_writes[key] = str(body["metadata"].get("resourceVersion", ""))
        known = self.models.get(key)
        if known is not None and not older(body, known):
            self.models[key] = body

    def model(self, key: Key) -> dict[str, Any] | None:
        """The ModelDeployment as last seen (watch events and our own status writes)."""
        return self.models.get(key)

    def is_own_write(self, body: dict[str, Any]) -> bool:
        """Whether this is exactly the object our last status patch returned."""
        metadata = body["metadata"]
        written = self._own_writes.get((metadata["namespace"], metadata["name"]))
        return written is not None and written == metadata.get("resourceVersion")

    def deployment_seen(self, event: str, body: dict[str, Any]) -> None:
        """Capacity's view: the watch's events and our own applies, newest first."""
        body = without_managed_fields(body)
        key = owner_key(body)
        if key is None:
            return
        if event == "DELETED":
            known = self.deployments.get(key)
            if known is not None and known["metadata"]["name"] == body["metadata"]["name"]:
                self.deployments.pop(key, None)
        else:
            known = self.deployments.get(key)
            current_name = child_name(key[1])
            if (
                known is not None
                and known["metadata"]["name"] == current_name
                and body["metadata"]["name"] != current_name
            ):
                return  # a child left by an older version's naming, about to be deleted
            if known is None or not older(body, known):
                self.deployments[key] = body
        self._reaccount(key)

    def tier_seen(self, event: str, body: dict[str, Any]) -> None:
        body = without_managed_fields(body)
        name = body["metadata"]["name"]
        if event == "DELETED":
            self.tiers.pop(name, None)
        else:
            known = self.tiers.get(name)
            if known is not None and (same_version(known, body) or older(body, known)):
                return  # nothing new (a resync, or the reconciler's own read)
            self.tiers[name] = body
            same_spec = known is not None and known["metadata"].get("generation") == body[
                "metadata"
            ].get("generation")
            if same_spec and body["metadata"].get("generation") is not None:
                # A status write (the tier reconciler's own, after every grant that
                # moved): what each consumer holds is the same; re-adding up the whole
                # fleet here made every tier pass O(fleet) twice over.
                self._tiers_parsed = [
                    t for t in self._tiers_parsed if t.name != name
                ] + self._parse_tiers([body])
                return
        self.reaccount_all()


def older(candidate: dict[str, Any], known: dict[str, Any]) -> bool:
    """Whether candidate is an earlier version of known.

    Resource versions of one kind compare as decimal integers (KEP-5504,
    stable since Kubernetes 1.35); anything else is taken as not older.
    """
    a = str(candidate["metadata"].get("resourceVersion", ""))
    b = str(known["metadata"].get("resourceVersion", ""))
    return a.isdigit() and b.isdigit() and int(a) < int(b)


def without_managed_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The object without metadata.managedFields, which nothing here reads and which
    is often the largest part of a stored object (controller-runtime strips it too)."""
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or "managedFields" not in metadata:
        return body
    return {**body, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}


def trimmed_pod(body: dict[str, Any]) -> dict[str, Any]:
    """What the autoscaler (readiness, IP, phase), status (scheduler conditions) and
    the GPU meter (GPUs, when Ready turned) read of a pod: a few hundred bytes kept
    instead of the whole object."""
    metadata, status = body["metadata"], body.get("status") or {}
    kept_metadata = {
        k: metadata[k]
        for k in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "labels",
            "deletionTimestamp",
            "resourceVersion",
        )
        if k in metadata
    }
    kept_status = {k: status[k] for k in ("phase", "podIP") if k in status}
    kept_status["conditions"] = [
        {k: c[k] for k in ("type", "status", "reason", "message", "lastTransitionTime") if k in c}
        for c in status.get("conditions") or []
    ]
    # When each container last started (the SLO meter counts a pod's requests from
    # its first one when it started after the operator began measuring), or why it
    # waits (status names the pod that holds a multi-node group back, and why).
    for field_name in ("initContainerStatuses", "containerStatuses"):
        kept = [_container_state(c) for c in status.get(field_name) or []]
        if kept or field_name == "containerStatuses":
            kept_status[field_name] = kept
    containers = []
    for container in (body.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        gpus = {
            kind: {GPU_RESOURCE: resources[kind][GPU_RESOURCE]}
            for kind in ("limits", "requests")
            if GPU_RESOURCE in (resources.get(kind) or {})
        }
        if gpus:
            containers.append({"resources": gpus})
    return {"metadata": kept_metadata, "spec": {"containers": containers}, "status": kept_status}


def _container_state(container: dict[str, Any]) -> dict[str, Any]:
    state = container.get("state") or {}
    if "running" in state:
        started = (state.get("running") or {}).get("startedAt")
        kept: dict[str, Any] = {"running": {"startedAt": started} if started else {}}
    elif "waiting" in state:
        waiting = state.get("waiting") or {}
        kept = {
            "waiting": {k: str(waiting[k])[:256] for k in ("reason", "message") if k in waiting}
        }
    elif "terminated" in state:
        kept = {"terminated": {k: (state.get("terminated") or {}).get(k) for k in ("reason",)}}
    else:
        kept = {}
    return {"name": container.get("name"), "state": kept}


def same_version(a: dict[str, Any], b: dict[str, Any]) -> bool:
    version = a["metadata"].get("resourceVersion")
    return version is not None and version == b["metadata"].get("resourceVersion")


def _typed(body: dict[str, Any], resource: Resource) -> dict[str, Any]:
    return {**body, "apiVersion": resource.api_version, "kind": resource.kind}
