"""An in-memory API server for the shell's unit tests: leader election, the work
queue, the reconcilers and the capacity gate.

It enforces what the real server enforces on writes, because that is what the
code under test relies on: every write moves the resourceVersion, a replace that
carries a stale one is refused, and so is a create of a name that exists; a
server-side apply merges the applied fields into the stored object and moves
metadata.generation only when the spec changes; a status patch never touches the
spec. Refusals are `ApiError`s built by the real client's `api_error` from a
metav1.Status body, so the code takes the very branches (`.conflict`,
`.not_found`) it takes against a cluster. Every write is also delivered to the
registered watchers as a watch event ("ADDED", "MODIFIED", "DELETED"), which is
how the operator's cache is fed by kopf in production.

What it does not do: admission (schema, CEL), owner-reference garbage
collection, field managers and conflicts between them, and any controller's work
(`settle` stands in for kube-controller-manager rolling a Deployment out).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from typing import Any

from turnpike.controller.cache import Cache
from turnpike.kube.client import ApiError, api_error
from turnpike.kube.resources import Resource, resource_for

ObjectKey = tuple[str, str | None, str]
PHRASES = {404: "Not Found", 409: "Conflict", 500: "Internal Server Error"}


def described(obj: dict[str, Any]) -> str:
    """How the server names an object in messages: leases.coordination.k8s.io "x"."""
    resource = resource_for(obj)
    group = resource.api_version.rpartition("/")[0]
    return f'{resource.plural}{"." + group if group else ""} "{obj["metadata"]["name"]}"'


def status_error(code: int, reason: str, message: str, obj: dict[str, Any]) -> ApiError:
    """The error the client raises for this metav1.Status answer."""
    resource = resource_for(obj)
    group = resource.api_version.rpartition("/")[0]
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": obj["metadata"]["name"], "group": group, "kind": resource.plural},
        "code": code,
    }
    return api_error(code, PHRASES.get(code, reason), json.dumps(status).encode())


class FakeKube:
    """Objects by (kind, namespace, name). `before(method)` runs at each call; it may raise."""

    def __init__(self) -> None:
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.refused: list[str] = []  # reasons of the writes the server turned down
        self.before: Callable[[str], None] | None = None
        self.watchers: list[Callable[[str, dict[str, Any]], None]] = []
        self.applied: list[dict[str, Any]] = []  # bodies sent by server-side apply
        self.status_patches: list[dict[str, Any]] = []
        self.deleted: list[ObjectKey] = []
        self.events: list[dict[str, Any]] = []  # Events created, in order
        self._version = 0

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store obj as a write by someone else would: a new resourceVersion, no checks."""
        stored = copy.deepcopy(obj)
        self._version += 1
        stored["metadata"]["resourceVersion"] = str(self._version)
        stored["metadata"].setdefault("generation", 1)
        key = self._key(stored)
        event = "MODIFIED" if key in self.objects else "ADDED"
        self.objects[key] = stored
        self._notify(event, stored)
        return copy.deepcopy(stored)

    def add(self, *objs: dict[str, Any]) -> None:
        """Store objects as they are (their resourceVersions included) before a test runs."""
        for obj in objs:
            self.objects[self._key(obj)] = copy.deepcopy(obj)

    def watch(self, watcher: Callable[[str, dict[str, Any]], None]) -> None:
        """Deliver every later write to watcher, as a watch would."""
        self.watchers.append(watcher)

    def _notify(self, event: str, obj: dict[str, Any]) -> None:
        for watcher in self.watchers:
            watcher(event, copy.deepcopy(obj))

    def stored(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        return self.objects[(kind, namespace, name)]

    def settle(self, namespace: str, name: str) -> dict[str, Any]:
        """Do kube-controller-manager's part for a Deployment: roll it out in full."""
        deployment = copy.deepcopy(self.stored("Deployment", namespace, name))
        replicas = int(deployment["spec"].get("replicas", 1))
        deployment["status"] = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
        generation = deployment["metadata"]["generation"]
        stored = self.put(deployment)
        self.objects[self._key(stored)]["metadata"]["generation"] = generation
        return stored

    @staticmethod
    def _key(obj: dict[str, Any]) -> ObjectKey:
        metadata = obj["metadata"]
        return (obj["kind"], metadata.get("namespace"), metadata["name"])

    async def _enter(self, method: str) -> None:
        await asyncio.sleep(0)  # a round trip: other replicas' calls interleave here
        self.calls.append(method)
        if self.before is not None:
            self.before(method)

    def _refuse(self, code: int, reason: str, message: str, obj: dict[str, Any]) -> ApiError:
        self.refused.append(reason)
        return status_error(code, reason, message, obj)

    async def get(
        self, resource: Resource, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        await self._enter("get")
        found = self.objects.get((resource.kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Equality selectors only (``a=b,c=d``), which is all the operator sends."""
        await self._enter("list")
        wanted = dict(
            term.split("=", 1) for term in (label_selector or "").split(",") if "=" in term
        )
        return [
            copy.deepcopy(obj)
            for (kind, ns, _), obj in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
            if kind == resource.kind
            and namespace in (None, ns)
            and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    async def apply(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        """Server-side apply, as far as one field manager sees it: the applied fields
        replace the stored ones; a changed spec moves the generation; status stays."""
        await self._enter("apply")
        self.applied.append(copy.deepcopy(obj))
        key = self._key(obj)
        stored = self.objects.get(key)
        merged = copy.deepcopy(obj)
        if stored is None:
            merged["metadata"]["generation"] = 1
        else:
            merged["metadata"] = {**stored["metadata"], **merged["metadata"]}
            changed = stored.get("spec") != obj.get("spec")
            merged["metadata"]["generation"] = stored["metadata"]["generation"] + int(changed)
            if "status" in stored:
                merged["status"] = stored["status"]
        generation = merged["metadata"]["generation"]
        written = self.put(merged)
        self.objects[key]["metadata"]["generation"] = generation
        written["metadata"]["generation"] = generation
        return written

    async def patch_status(
        self, resource: Resource, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """A merge patch of the status subresource: nulls remove fields."""
        await self._enter("patch_status")
        self.status_patches.append(copy.deepcopy(status))
        stored = self.objects.get((resource.kind, namespace, name))
        if stored is None:
            raise self._refuse(
                404,
                "NotFound",
                f'{resource.plural} "{name}" not found',
                {
                    "kind": resource.kind,
                    "apiVersion": resource.api_version,
                    "metadata": {"name": name},
                },
            )
        updated = copy.deepcopy(stored)
        updated["status"] = json_merge(updated.get("status", {}), status)
        return self.put(updated)

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> None:
        """Like the client, a delete of something already gone is not an error."""
        await self._enter("delete")
        key = (resource.kind, namespace, name)
        stored = self.objects.pop(key, None)
        if stored is None:
            return
        self.deleted.append(key)
        self._notify("DELETED", stored)

    async def patch(
        self, resource: Resource, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch of metadata; a resourceVersion in it must be current."""
        await self._enter("patch")
        stored = self.objects.get((resource.kind, namespace, name))
        ref = {
            "kind": resource.kind,
            "apiVersion": resource.api_version,
            "metadata": {"name": name},
        }
        if stored is None:
            raise self._refuse(404, "NotFound", f'{resource.plural} "{name}" not found', ref)
        wanted = patch.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != stored["metadata"]["resourceVersion"]:
            raise self._refuse(409, "Conflict", "the object has been modified", ref)
        updated = copy.deepcopy(stored)
        for key, value in patch.get("metadata", {}).items():
            if key != "resourceVersion":
                updated["metadata"][key] = value
        self.applied.append({"patch": copy.deepcopy(patch)})
        return self.put(updated)

    def status(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.objects[(kind, namespace, name)].get("status", {})
        return found

    def everything_written(self) -> str:
        """Every byte the code under test sent, for "this never leaks" assertions."""
        return json.dumps(
            [self.applied, self.status_patches, self.events, list(self.objects)], default=str
        )

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self._enter("create")
        if obj.get("kind") == "Event":  # posted, never read back by the operator
            self.events.append(copy.deepcopy(obj))
            return copy.deepcopy(obj)
        what = described(obj)
        if self._key(obj) in self.objects:
            raise self._refuse(409, "AlreadyExists", f"{what} already exists", obj)
        return self.put(obj)

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self._enter("replace")
        what = described(obj)
        stored = self.objects.get(self._key(obj))
        if stored is None:
            raise self._refuse(404, "NotFound", f"{what} not found", obj)
        version = obj["metadata"].get("resourceVersion")
        if version is not None and version != stored["metadata"]["resourceVersion"]:
            message = (
                f"Operation cannot be fulfilled on {what}: the object has been modified;"
                " please apply your changes to the latest version and try again"
            )
            raise self._refuse(409, "Conflict", message, obj)
        return self.put(obj)  # no resourceVersion: an unconditional update, as for Leases


def feed(cache: Cache, event: str, obj: dict[str, Any]) -> None:
    """What controller/handlers.py does with a watch event, minus the queueing."""
    if obj["kind"] == "ModelDeployment":
        cache.model_seen(event, obj)
    elif obj["kind"] == "CapacityTier":
        cache.tier_seen(event, obj)
    elif obj["kind"] in ("Deployment", "LeaderWorkerSet", "Service", "PodDisruptionBudget"):
        cache.child_seen(event, obj)


def cache_fed_by(kube: FakeKube) -> Cache:
    """A cache primed with what is stored and kept current by the fake's watch."""
    cache = Cache(leaderworkersets=True)  # the fake serves every kind
    for obj in list(kube.objects.values()):
        feed(cache, "ADDED", obj)
    kube.watch(lambda event, obj: feed(cache, event, obj))
    return cache


def json_merge(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch: objects merge key by key at
    every depth, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = json_merge(merged.get(key), value)
    return merged
