"""What the controllers need of the API server, as a protocol.

`turnpike.kube.client.Kube` implements it against a real server; the unit tests'
in-memory server (tests/unit/fakekube.py) implements it in memory, so the
reconcilers, the capacity gate and leader election run unchanged on both.
"""

from __future__ import annotations

from typing import Any, Protocol

from turnpike.kube.resources import Resource


class KubeAPI(Protocol):
    async def get(
        self, resource: Resource, namespace: str | None, name: str
    ) -> dict[str, Any] | None: ...

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]: ...

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    async def patch(
        self, resource: Resource, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def patch_status(
        self, resource: Resource, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]: ...

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> None: ...
