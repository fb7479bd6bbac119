"""The operator's poll of the gateways: sums, wakes once, and never claims "idle"
for a gateway it did not hear from. Real HTTP on loopback; the API server is a
small fake that lists gateway pods."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from hack.ports import free_port
from turnpike.autoscale.policy import GatewayLoad
from turnpike.controller.gateways import STALE_SECONDS, GatewayLoads, ready_urls
from turnpike.gateway.load import PATH
from turnpike.slo.window import Counts


class Gateways:
    """Gateways on loopback whose load documents a test sets, or that fail."""

    def __init__(self, count: int) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.docs: list[Any] = [{"v": 1, "deployments": {}} for _ in range(count)]
        self.broken = [False] * count
        self._runners: list[web.AppRunner] = []

    async def __aenter__(self) -> Gateways:
        for i, port in enumerate(self.ports):
            app = web.Application()
            app.router.add_get(PATH, self._handler(i))
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self._runners.append(runner)
        return self

    async def __aexit__(self, *_: object) -> None:
        for runner in self._runners:
            await runner.cleanup()

    def _handler(self, i: int) -> Any:
        async def handle(_: web.Request) -> web.Response:
            if self.broken[i]:
                return web.Response(status=500)
            return web.json_response(self.docs[i])

        return handle

    def hold(self, i: int, **held: int) -> None:
        self.docs[i] = {
            "v": 1,
            "deployments": {
                f"ml/{name}": {"held": n, "queued": 0, "inFlight": 0} for name, n in held.items()
            },
        }

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}{PATH}" for port in self.ports]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_held_requests_are_summed_and_wake_a_deployment_once() -> None:
    woken: list[tuple[str, str]] = []

    async def scenario() -> None:
        async with Gateways(2) as gateways, aiohttp.ClientSession(trust_env=False) as session:
            loads = GatewayLoads(None, on_held=woken.append, urls=gateways.urls())  # type: ignore[arg-type]
            assert loads.load(("ml", "llama")) is None  # never polled: unknown
            await loads.poll(session)
            assert loads.load(("ml", "llama")) == GatewayLoad(0)
            gateways.hold(0, llama=3)
            gateways.hold(1, llama=4, other=1)
            await loads.poll(session)
            await loads.poll(session)  # still held: not woken again
            assert loads.load(("ml", "llama")) == GatewayLoad(7)
            assert sorted(woken) == [("ml", "llama"), ("ml", "other")]

    asyncio.run(scenario())


def test_a_silent_gateway_means_unknown_unless_something_is_held() -> None:
    async def scenario() -> None:
        async with Gateways(2) as gateways, aiohttp.ClientSession(trust_env=False) as session:
            clock = Clock()
            loads = GatewayLoads(
                None,  # type: ignore[arg-type]
                on_held=lambda _: None,
                urls=gateways.urls(),
                clock=clock,
            )
            await loads.poll(session)
            assert loads.load(("ml", "idle")) == GatewayLoad(0)
            gateways.broken[1] = True
            gateways.hold(0, busy=2)
            clock.now += STALE_SECONDS  # the last complete poll is now too old
            await loads.poll(session)
            # The silent gateway may hold requests for "idle": not idle as far as we know.
            assert loads.load(("ml", "idle")) is None
            # What the other one holds is enough to wake "busy".
            assert loads.load(("ml", "busy")) == GatewayLoad(2)
            # A garbage document counts as silence too.
            gateways.broken[1] = False
            gateways.docs[1] = {"v": 99}
            clock.now += 1
            await loads.poll(session)
            assert loads.load(("ml", "idle")) is None

    asyncio.run(scenario())


def test_gateway_pods_are_found_by_readiness_and_address() -> None:
    def pod(name: str, ip: str | None, ready: bool, deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if deleting:
            meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
        return {
            "metadata": meta,
            "status": {
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }

    pods = [
        pod("a", "10.0.0.2", True),
        pod("b", "10.0.0.3", False),
        pod("c", None, True),
        pod("d", "10.0.0.4", True, deleting=True),
        pod("e", "fd00::5", True),
    ]
    assert ready_urls(pods, 8080) == [
        f"http://10.0.0.2:8080{PATH}",
        f"http://[fd00::5]:8080{PATH}",
    ]


def test_no_gateway_configured_reports_nothing() -> None:
    loads = GatewayLoads(None, on_held=lambda _: None)  # type: ignore[arg-type]
    assert not loads.configured
    assert loads.load(("ml", "x")) is None


def slo_doc(instance: str, requests: int, good: int, threshold: float = 500.0) -> dict[str, Any]:
    return {
        "v": 1,
        "instance": instance,
        "deployments": {
            "ml/llama": {
                "held": 0,
                "slo": {"thresholdMs": threshold, "requests": requests, "good": good},
            }
        },
    }


def test_slo_counts_are_added_once_across_missed_polls_and_restarts() -> None:
    async def scenario() -> None:
        async with Gateways(1) as gateways, aiohttp.ClientSession(trust_env=False) as session:
            loads = GatewayLoads(None, on_held=lambda _: None, urls=gateways.urls())  # type: ignore[arg-type]
            key = ("ml", "llama")
            assert loads.take_slo(key, 500.0) is None  # nobody measures it: Triton's estimate
            gateways.docs[0] = slo_doc("a", 100, 90)
            await loads.poll(session)  # the first poll is the baseline
            assert loads.take_slo(key, 500.0) == Counts()
            gateways.docs[0] = slo_doc("a", 110, 95)
            await loads.poll(session)
            gateways.broken[0] = True
            await loads.poll(session)  # a missed poll loses nothing: the counts are cumulative
            gateways.broken[0] = False
            gateways.docs[0] = slo_doc("a", 130, 105)
            await loads.poll(session)
            assert loads.take_slo(key, 500.0) == Counts(30, 15, 15)
            assert loads.take_slo(key, 500.0) == Counts()  # handed over once
            gateways.docs[0] = slo_doc("b", 7, 7)  # the gateway restarted: all of it is new
            await loads.poll(session)
            assert loads.take_slo(key, 500.0) == Counts(7, 7, 7)
            gateways.docs[0] = slo_doc("b", 9, 8, threshold=250.0)  # another objective
            await loads.poll(session)
            assert loads.take_slo(key, 500.0) == Counts()  # not comparable: not added

    asyncio.run(scenario())
