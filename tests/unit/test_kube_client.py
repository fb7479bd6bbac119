"""What the operator's REST client sends, on a recording transport."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar, cast

from kubernetes_asyncio import client as k8s_client

from turnpike.kube import Kube
from turnpike.kube.resources import EVENT, MODEL_DEPLOYMENT


class _Response:
    status = 200
    reason = "OK"
    headers: ClassVar[dict[str, str]] = {}

    async def read(self) -> bytes:
        return json.dumps({"metadata": {"name": "x"}}).encode()

    def release(self) -> None:
        pass


class RecordingApi:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def call_api(self, path: str, method: str, **kwargs: Any) -> _Response:
        self.calls.append({"path": path, "method": method, **kwargs})
        return _Response()


def test_every_write_names_turnpike_as_its_field_manager() -> None:
    # Defect 12: status patches were recorded under the client's user agent
    # (OpenAPI-Generator/...) in managedFields, not under turnpike.
    api = RecordingApi()
    kube = Kube(cast(k8s_client.ApiClient, api))
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "n"}}

    async def writes() -> None:
        await kube.patch_status(MODEL_DEPLOYMENT, "n", "m", {"replicas": 1})
        await kube.apply({**event, "kind": "Event"})
        await kube.create(event)
        await kube.replace(event)

    asyncio.run(writes())
    assert [c["method"] for c in api.calls] == ["PATCH", "PATCH", "POST", "PUT"]
    for call in api.calls:
        assert ("fieldManager", "turnpike") in call["query_params"], call["path"]
    assert api.calls[0]["path"].endswith("/modeldeployments/m/status")
    assert EVENT.plural in api.calls[2]["path"]
