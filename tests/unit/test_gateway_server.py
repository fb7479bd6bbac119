"""The gateway end to end, against fake Triton servers on 127.0.0.1.

Every wait is on a condition with a bounded timeout (``eventually``); slow
upstreams block on events the test sets, never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from turnpike.gateway.config import GatewayConfig, parse_config
from turnpike.gateway.endpoints import Endpoint, StaticEndpoints
from turnpike.gateway.server import Gateway

WAIT_S = 5.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))


async def eventually(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@dataclass(eq=False)
class FakeTriton:
    """A Triton stand-in: records what it got; ``gate`` holds infer until set."""

    name: str
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    block_infer: bool = False
    pending_metric: float = 0.0
    infers: int = 0
    waiting: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    stream_gate: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/models/{m}/infer", self.infer)
        app.router.add_post("/v2/models/{m}/generate", self.generate)
        app.router.add_post("/v2/models/{m}/generate_stream", self.generate_stream)
        app.router.add_get("/v2/models/{m}", self.metadata)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def infer(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        body = await request.json()
        self.infers += 1
        if self.block_infer:
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        return web.json_response(
            {"model_name": request.match_info["m"], "served_by": self.name, "id": body.get("id")},
            headers={"Inference-Header-Content-Length": "0"},
        )

    async def generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"text_output": f"echo:{body['text_input']}", "got": body})

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"text_output": "one"}\n\n')
        await self.stream_gate.wait()  # the rest only once the test saw the first token
        for token in (" two", " three"):
            await response.write(f"data: {json.dumps({'text_output': token})}\n\n".encode())
        await response.write_eof()
        assert "text_input" in body
        return response

    async def metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["m"], "platform": "fake"})

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            text="# TYPE nv_inference_pending_request_count gauge\n"
            f'nv_inference_pending_request_count{{model="m",version="1"}} {self.pending_metric}\n'
        )

    @property
    def endpoint(self) -> Endpoint:
        assert self.server is not None and self.server.port is not None
        port = self.server.port
        return Endpoint("127.0.0.1", port, metrics_port=port, name=self.name)


@asynccontextmanager
async def upstreams(*names: str) -> AsyncIterator[list[FakeTriton]]:
    fakes = [FakeTriton(name) for name in names]
    for fake in fakes:
        fake.server = TestServer(fake.app(), host="127.0.0.1")
        await fake.server.start_server()
    try:
        yield fakes
    finally:
        for fake in fakes:
            fake.gate.set()
            fake.stream_gate.set()
            assert fake.server is not None
            await fake.server.close()


@asynccontextmanager
async def gateway(
    endpoints: StaticEndpoints, config: GatewayConfig | None = None, **kwargs: Any
) -> AsyncIterator[tuple[Gateway, TestClient[web.Request, web.Application]]]:
    kwargs.setdefault("scrape_interval_s", None)
    gw = Gateway(config or parse_config({}), endpoints, **kwargs)
    client = TestClient(TestServer(gw.app(), host="127.0.0.1"))
    await client.start_server()
    try:
        yield gw, client
    finally:
        await client.close()


async def infer(client: TestClient[web.Request, web.Application], **headers: str) -> Any:
    return await client.post("/v2/models/m/infer", json={"id": "1", "inputs": []}, headers=headers)


def test_infer_is_passed_through_without_the_credentials() -> None:
    async def main() -> None:
        config = parse_config({"tenants": {"acme": {"tier": "default", "apiKeys": ["sk-secret"]}}})
        async with (
            upstreams("a") as (a,),
            gateway(StaticEndpoints({"m": [a.endpoint]}), config) as (
                _,
                client,
            ),
        ):
            response = await infer(client, Authorization="Bearer sk-secret")
            assert response.status == 200
            assert (await response.json())["served_by"] == "a"
            assert response.headers["Inference-Header-Content-Length"] == "0"
            assert "Authorization" not in a.headers[0]
            meta = await client.get("/v2/models/m", headers={"Authorization": "Bearer sk-secret"})
            assert (await meta.json())["platform"] == "fake"
            assert (await infer(client, Authorization="Bearer wrong")).status == 401
            assert (await client.post("/v2/models/nope/infer", json={})).status == 404

    run(main())


def test_a_request_held_at_zero_replicas_succeeds_once_an_endpoint_appears() -> None:
    async def main() -> None:
        endpoints = StaticEndpoints({"m": []})
        async with upstreams("a") as (a,), gateway(endpoints) as (gw, client):
            pending = asyncio.create_task(infer(client))
            await eventually(lambda: gw.holds.held("m") == 1, "the request to be held")
            metrics = await (await client.get("/metrics")).text()
            assert 'turnpike_gateway_held_requests{deployment="m"} 1.0' in metrics
            assert (await client.get("/v2/models/m/ready")).status == 503  # a probe holds nothing
            load = await (await client.get("/turnpike/load")).json()
            assert load["deployments"]["m"]["held"] == 1  # what the operator polls
            endpoints.set("m", [a.endpoint])
            response = await pending
            assert response.status == 200 and gw.holds.held("m") == 0

    run(main())


def test_a_full_hold_answers_503_with_retry_after_and_a_hold_times_out() -> None:
    async def main() -> None:
        config = parse_config(
            {"defaults": {"holdLimit": 1, "holdTimeoutSeconds": 0.5, "retryAfterSeconds": 7}}
        )
        async with gateway(StaticEndpoints({"m": []}), config) as (gw, client):
            first = asyncio.create_task(infer(client))
            await eventually(lambda: gw.holds.held("m") == 1, "the first request to be held")
            second = await infer(client)
            assert second.status == 503 and second.headers["Retry-After"] == "7"
            timed_out = await first
            assert timed_out.status == 503 and timed_out.headers["Retry-After"] == "7"
            metrics = await (await client.get("/metrics")).text()
            assert 'reason="hold_full"' in metrics and 'reason="hold_timeout"' in metrics

    run(main())


def test_streaming_arrives_in_chunks_before_the_upstream_finishes() -> None:
    async def main() -> None:
        async with (
            upstreams("a") as (a,),
            gateway(StaticEndpoints({"m": [a.endpoint]})) as (
                _,
                client,
            ),
        ):
            response = await client.post("/v2/models/m/generate_stream", json={"text_input": "hi"})
            first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), WAIT_S)
            assert b'"one"' in first and not a.stream_gate.is_set()
            a.stream_gate.set()
            rest = await response.content.read()
            assert b" two" in rest and b" three" in rest

    run(main())


def test_openai_streaming_translates_tokens_as_they_come() -> None:
    async def main() -> None:
        async with (
            upstreams("a") as (a,),
            gateway(StaticEndpoints({"m": [a.endpoint]})) as (
                _,
                client,
            ),
        ):
            response = await client.post(
                "/v1/chat/completions",
                json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
            )
            assert response.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), WAIT_S)
            chunk = json.loads(first.removeprefix(b"data: "))
            assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": "one"}
            a.stream_gate.set()
            rest = (await response.content.read()).decode()
            assert rest.rstrip().endswith("data: [DONE]") and '"content":" three"' in rest

    run(main())


def test_openai_completion_and_chat_reach_generate() -> None:
    async def main() -> None:
        async with (
            upstreams("a") as (a,),
            gateway(StaticEndpoints({"m": [a.endpoint]})) as (
                _,
                client,
            ),
        ):
            completion = await client.post(
                "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 3}
            )
            body = await completion.json()
            assert body["choices"][0]["text"] == "echo:hi"
            assert body["object"] == "text_completion" and body["model"] == "m"
            chat = await client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "yo"}]},
            )
            message = (await chat.json())["choices"][0]["message"]
            assert message["content"].startswith("echo:<|im_start|>user\nyo")
            bad = await client.post("/v1/completions", json={"model": "m", "prompt": "x", "n": 3})
            assert bad.status == 400 and (await bad.json())["error"]["param"] == "n"
            missing = await client.post("/v1/completions", json={"model": "zz", "prompt": "x"})
            assert missing.status == 404

    run(main())


async def _busy_a_then_count(routing: str) -> tuple[int, int]:
    """Upstream a hangs, b answers; returns the requests each got of 1 + 10 sent."""
    async with (
        upstreams("a", "b") as (a, b),
        gateway(StaticEndpoints({"m": [a.endpoint, b.endpoint]}), routing=routing) as (_, client),
    ):
        a.block_infer = True
        stuck: list[asyncio.Task[Any]] = []

        async def send(until: Callable[[], bool]) -> None:
            task = asyncio.create_task(infer(client))
            await eventually(lambda: task.done() or until(), "an answer or a stuck request")
            if not task.done():
                stuck.append(task)

        while a.waiting == 0:  # the first request that lands on a stays there
            await send(lambda: a.waiting == 1)
        for _ in range(10):
            await send(lambda: a.waiting > 1)
        a.gate.set()
        await asyncio.gather(*stuck)
        return a.infers, b.infers


def test_least_outstanding_sends_to_the_less_busy_upstream() -> None:
    async def main() -> None:
        a_got, b_got = await _busy_a_then_count("least-outstanding")
        assert a_got == 1 and b_got >= 10
        a_rr, _ = await _busy_a_then_count("round-robin")
        assert a_rr > 1  # the baseline does pile onto the busy one

    run(main())


def test_a_scraped_triton_queue_steers_requests_away() -> None:
    async def main() -> None:
        async with (
            upstreams("a", "b") as (a, b),
            gateway(StaticEndpoints({"m": [a.endpoint, b.endpoint]}), scrape_interval_s=0.02) as (
                gw,
                client,
            ),
        ):
            a.pending_metric = 50  # another gateway's backlog
            assert (await infer(client)).status == 200  # makes the deployment known
            await eventually(
                lambda: (
                    gw.queue_readings().get("a") is not None
                    and gw.queue_readings()["a"].depth == 50
                ),
                "a's queue to be scraped",
            )
            before = a.infers
            for _ in range(6):
                assert (await infer(client)).status == 200
            assert a.infers == before and b.infers >= 6

    run(main())


def test_at_its_maximum_the_lower_tier_is_shed_and_the_reserved_served() -> None:
    async def main() -> None:
        config = parse_config(
            {
                "tiers": {
                    "reserved": {"priority": 10, "weight": 3, "reserved": True},
                    "spot": {"priority": 0, "weight": 1},
                },
                "tenants": {
                    "acme": {"tier": "reserved", "apiKeys": ["sk-acme"]},
                    "cheap": {"tier": "spot", "apiKeys": ["sk-cheap"]},
                },
                "defaultTier": None,
                "defaults": {"maxInFlightPerReplica": 1, "queueLimit": 1, "retryAfterSeconds": 2},
            }
        )
        acme = {"Authorization": "Bearer sk-acme"}
        cheap = {"Authorization": "Bearer sk-cheap"}
        async with (
            upstreams("a") as (a,),
            gateway(StaticEndpoints({"m": [a.endpoint]}), config) as (
                gw,
                client,
            ),
        ):
            a.block_infer = True
            running = asyncio.create_task(infer(client, **acme))
            await eventually(lambda: a.waiting == 1, "the reserved request upstream")
            queued_spot = asyncio.create_task(infer(client, **cheap))
            await eventually(lambda: gw.snapshot().queued[("m", "spot")] == 1, "spot queued")
            queued_reserved = asyncio.create_task(infer(client, **acme))
            shed = await queued_spot  # pushed out of the queue by the reserved request
            assert shed.status == 429 and shed.headers["Retry-After"] == "2"
            late = await infer(client, **cheap)
            assert late.status == 429
            a.gate.set()
            assert (await running).status == 200 and (await queued_reserved).status == 200
            assert (await infer(client)).status == 401  # no default tier: credentials required
            metrics = await (await client.get("/metrics")).text()
            shed_line = 'rejected_requests_total{deployment="m",reason="shed",tier="spot"} 2.0'
            assert f"turnpike_gateway_{shed_line}" in metrics
            assert (
                'turnpike_gateway_admitted_requests_total{deployment="m",tier="reserved"} 2.0'
                in (metrics)
            )
            assert "sk-acme" not in metrics

    run(main())


def test_a_full_queue_of_a_growing_deployment_is_503() -> None:
    async def main() -> None:
        config = parse_config(
            {"defaults": {"maxInFlightPerReplica": 1, "queueLimit": 0, "maxReplicas": 4}}
        )
        async with (
            upstreams("a") as (a,),
            gateway(StaticEndpoints({"m": [a.endpoint]}), config) as (
                _,
                client,
            ),
        ):
            a.block_infer = True
            running = asyncio.create_task(infer(client))
            await eventually(lambda: a.waiting == 1, "the first request upstream")
            full = await infer(client)
            assert full.status == 503 and "Retry-After" in full.headers
            a.gate.set()
            assert (await running).status == 200

    run(main())


def test_histograms_have_a_bucket_at_the_slo_threshold() -> None:
    async def main() -> None:
        config = parse_config({"deployments": {"m": {"sloThresholdMilliseconds": 250}}})
        async with (
            upstreams("a") as (a,),
            gateway(StaticEndpoints({"m": [a.endpoint]}), config) as (
                _,
                client,
            ),
        ):
            assert (await infer(client)).status == 200
            metrics = await (await client.get("/metrics")).text()
            for family in ("request_duration", "queue_wait", "time_to_first_byte"):
                line = (
                    f'turnpike_gateway_{family}_seconds_bucket{{deployment="m",le="0.25",'
                    'tier="default"} 1.0'
                )
                assert line in metrics, family

    run(main())


def test_a_dead_replica_is_skipped_for_the_next_one() -> None:
    async def main() -> None:
        async with upstreams("a") as (a,):
            dead = Endpoint("127.0.0.1", 1, name="dead")  # nothing listens on port 1
            async with gateway(
                StaticEndpoints({"m": [dead, a.endpoint]}), routing="round-robin"
            ) as (
                _,
                client,
            ):
                for _ in range(2):
                    assert (await infer(client)).status == 200

    run(main())


def test_a_hundred_requests_arriving_at_zero_all_succeed() -> None:
    async def main() -> None:
        endpoints = StaticEndpoints({"m": []})
        async with upstreams("a") as (a,), gateway(endpoints) as (gw, client):
            sent = [asyncio.create_task(infer(client)) for _ in range(100)]
            await eventually(lambda: gw.holds.held("m") == 100, "all 100 to be held")
            endpoints.set("m", [a.endpoint])
            statuses = [r.status for r in await asyncio.gather(*sent)]
            assert statuses == [200] * 100 and a.infers == 100

    run(main())


def test_a_client_that_leaves_the_queue_gives_its_place_back() -> None:
    async def main() -> None:
        config = parse_config({"defaults": {"maxInFlightPerReplica": 1}})
        async with (
            upstreams("a") as (a,),
            gateway(StaticEndpoints({"m": [a.endpoint]}), config) as (
                gw,
                client,
            ),
        ):
            a.block_infer = True
            running = asyncio.create_task(infer(client))
            await eventually(lambda: a.waiting == 1, "the first request upstream")
            leaving = asyncio.create_task(infer(client))
            await eventually(lambda: gw.snapshot().queued[("m", "default")] == 1, "one queued")
            leaving.cancel()
            await eventually(lambda: gw.snapshot().queued[("m", "default")] == 0, "queue empty")
            a.gate.set()
            assert (await running).status == 200
            assert (await infer(client)).status == 200
            assert gw.snapshot().in_flight[("m", "default")] == 0

    run(main())
