"""Discovery feeding a live gateway: a request held for a deployment at zero is
served the moment the watch shows its first ready pod, under the model name
Triton serves. The API server is scripted (one LIST, then watch events the test
sends); the upstream is a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from aiohttp.test_utils import TestClient, TestServer

from tests.unit.test_gateway_discovery import md, pod
from tests.unit.test_gateway_server import eventually, run, upstreams
from turnpike.gateway.config import parse_config
from turnpike.gateway.server import Gateway
from turnpike.gateway.watched import POD_SELECTOR, KubeEndpoints
from turnpike.kube import Kube
from turnpike.kube.resources import MODEL_DEPLOYMENT, POD, Resource


class ScriptedApi:
    """LIST answers per resource, then watch events pushed by the test."""

    def __init__(self, lists: dict[str, list[dict[str, Any]]]) -> None:
        self.lists = lists
        self.events: dict[str, asyncio.Queue[tuple[str, dict[str, Any]]]] = {
            plural: asyncio.Queue() for plural in lists
        }
        self.selectors: dict[str, str | None] = {}

    async def list_with_version(
        self, resource: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        self.selectors[resource.plural] = label_selector
        return self.lists[resource.plural], "1"

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        label_selector: str | None,
        timeout_seconds: int,
        resource_version: str | None = None,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        queue = self.events[resource.plural]
        while True:
            yield await queue.get()

    def send(self, resource: Resource, event: str, obj: dict[str, Any]) -> None:
        self.events[resource.plural].put_nowait((event, obj))


def test_a_request_held_at_zero_is_served_when_the_first_pod_turns_ready() -> None:
    async def main() -> None:
        chat = md("chat", model="llama")
        chat["spec"]["slo"] = {"thresholdMilliseconds": 5000}
        api = ScriptedApi({"modeldeployments": [chat], "pods": [pod("old", "other")]})
        endpoints = KubeEndpoints(cast(Kube, api))
        await endpoints.start(timeout_s=5)
        assert api.selectors == {"modeldeployments": None, "pods": POD_SELECTOR}
        gw = Gateway(parse_config({}), endpoints, scrape_interval_s=None)
        # Reported for the SLO meter from discovery on, before any request: the
        # operator counts it here from the first one, never also from Triton.
        tracked = gw.slo.counts["ml/chat"]
        assert (tracked.threshold_ms, tracked.requests) == (5000.0, 0)
        async with upstreams("a") as (a,):
            client = TestClient(TestServer(gw.app(), host="127.0.0.1"))
            await client.start_server()
            try:
                body = {"id": "1", "inputs": []}
                pending = asyncio.create_task(client.post("/v2/models/ml%2Fchat/infer", json=body))
                await eventually(lambda: gw.holds.held("ml/chat") == 1, "the request held")
                ready = pod("chat-1", "chat", ip="127.0.0.1")
                ready["spec"]["containers"][0]["ports"][0]["containerPort"] = a.endpoint.port
                api.send(POD, "ADDED", ready)
                response = await asyncio.wait_for(pending, 5)
                assert response.status == 200
                answer = await response.json()
                # The replica was asked for the model Triton serves, not the name used.
                assert answer["model_name"] == "llama" and answer["served_by"] == "a"
                # The plain model name reaches the same deployment.
                again = await client.post("/v2/models/llama/infer", json=body)
                assert again.status == 200
                # Both were counted for the SLO meter, within spec.slo's threshold.
                count = gw.slo.counts["ml/chat"]
                assert (count.threshold_ms, count.requests, count.good) == (5000.0, 2, 2)
                # A deleted deployment is a 404 at once.
                api.send(MODEL_DEPLOYMENT, "DELETED", md("chat", model="llama"))
                await eventually(lambda: endpoints.fleet("llama") is None, "the route gone")
                gone = await client.post("/v2/models/llama/infer", json=body)
                assert gone.status == 404
            finally:
                await client.close()
                await endpoints.stop()

    run(main())


def test_start_gives_up_with_a_clear_error_when_the_api_never_answers() -> None:
    class Silent(ScriptedApi):
        async def list_with_version(
            self,
            resource: Resource,
            namespace: str | None = None,
            label_selector: str | None = None,
        ) -> tuple[list[dict[str, Any]], str]:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    async def main() -> None:
        endpoints = KubeEndpoints(cast(Kube, Silent({"modeldeployments": [], "pods": []})))
        try:
            await endpoints.start(timeout_s=0.2)
        except TimeoutError as exc:
            assert "did not list ModelDeployments and pods" in str(exc)
        else:
            raise AssertionError("start() returned without a LIST")

    run(main())
