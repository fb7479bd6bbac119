"""/metrics for Prometheus and /healthz for the kubelet's probes."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from turnpike.controller.metrics import Metrics


def parse_bind_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise SystemExit(f"bind address {address!r} is not HOST:PORT or :PORT")
    return host or "0.0.0.0", int(port)


async def start_http(address: str, metrics: Metrics, healthy: Callable[[], bool]) -> web.AppRunner:
    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def health_handler(_: web.Request) -> web.Response:
        ok = healthy()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "unhealthy\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler)
    app.router.add_get("/readyz", health_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = parse_bind_address(address)
    await web.TCPSite(runner, host, port).start()
    return runner
