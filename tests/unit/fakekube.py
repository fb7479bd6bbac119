"""An in-memory API server for the `Kube` methods leader election uses (get, create, replace).

It enforces what the real server enforces on writes, because that is what makes
leader election safe: every write moves the resourceVersion, a replace that carries
a stale one is refused, and so is a create of a name that exists. Refusals are
`ApiError`s built by the real client's `api_error` from a metav1.Status body, so
the code under test takes the very branches (`.conflict`, `.not_found`) it takes
against a cluster.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from typing import Any

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
        self._version = 0

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store obj as a write by someone else would: a new resourceVersion, no checks."""
        stored = copy.deepcopy(obj)
        self._version += 1
        stored["metadata"]["resourceVersion"] = str(self._version)
        self.objects[self._key(stored)] = stored
        return copy.deepcopy(stored)

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

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        await self._enter("create")
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
