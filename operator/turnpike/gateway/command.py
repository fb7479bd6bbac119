"""``turnpike gateway``: flags and the process around :class:`~turnpike.gateway.server.Gateway`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
from pathlib import Path

from turnpike.gateway.config import ConfigError, GatewayConfig, load_config
from turnpike.gateway.endpoints import StaticEndpoints, parse_static
from turnpike.gateway.routing import PICKERS
from turnpike.gateway.watched import KubeEndpoints

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8080"
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default=os.environ.get("TURNPIKE_GATEWAY_LISTEN", DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=(
            f"address to serve on (default {DEFAULT_LISTEN}, for local use; "
            "in a pod set 0.0.0.0:8080 so the Service can reach it)"
        ),
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("TURNPIKE_GATEWAY_CONFIG"),
        help="YAML file with tiers, tenants and per-deployment limits (default: one tier)",
    )
    parser.add_argument(
        "--static-endpoints",
        default=os.environ.get("TURNPIKE_GATEWAY_STATIC_ENDPOINTS"),
        metavar="MODEL=HOST:PORT[@METRICSPORT],...",
        help=(
            "fixed replicas per model; repeat a model for more replicas, MODEL= for none. "
            "Without it the gateway discovers ModelDeployments and their ready pods"
        ),
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=None,
        metavar="NS",
        help="discover only in this namespace (repeat for several; default: all namespaces)",
    )
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig for discovery (default: $KUBECONFIG, else the pod's service account)",
    )
    parser.add_argument(
        "--routing",
        choices=PICKERS,
        default="least-outstanding",
        help="how a replica is chosen (default least-outstanding)",
    )
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="read Triton's queue from replicas with a metrics port this often; 0: never",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")


def parse_listen(address: str) -> tuple[str, int]:
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"--listen {address!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]") or "0.0.0.0", int(port)


def run(args: argparse.Namespace) -> int:
    from turnpike.controller.logs import configure

    host, port = parse_listen(args.listen)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise SystemExit(f"--config: {exc}") from None
    for namespace in args.namespace or ():
        if not NAMESPACE.fullmatch(namespace):
            raise SystemExit(f"--namespace {namespace!r} is not a namespace name")
    endpoints: StaticEndpoints | None = None
    if args.static_endpoints is not None:
        if args.namespace:
            raise SystemExit("--namespace chooses where to discover: not with --static-endpoints")
        try:
            endpoints = StaticEndpoints(parse_static(args.static_endpoints))
        except ValueError as exc:
            raise SystemExit(f"--static-endpoints: {exc}") from None
    if args.scrape_interval < 0:
        raise SystemExit("--scrape-interval must be >= 0")
    interval = args.scrape_interval or None
    configure(args.log_level, args.log_format)  # only once every flag is known good
    asyncio.run(_serve(args, config, endpoints, host, port, interval))
    return 0


async def _serve(
    args: argparse.Namespace,
    config: GatewayConfig,
    static: StaticEndpoints | None,
    host: str,
    port: int,
    scrape_interval_s: float | None,
) -> None:
    from turnpike.gateway.server import Gateway, serve

    endpoints: StaticEndpoints | KubeEndpoints
    kube = None
    if static is not None:
        endpoints = static
    else:
        from turnpike.kube import connect

        try:
            kube = await connect(args.kubeconfig)
        except Exception as exc:  # kubernetes_asyncio raises several unrelated types
            raise SystemExit(
                f"cannot read Kubernetes credentials for discovery ({exc}); run in a pod, "
                "give --kubeconfig, or route to fixed replicas with --static-endpoints"
            ) from None
        endpoints = KubeEndpoints(kube, args.namespace or [None])
        await endpoints.start()
    gateway = Gateway(config, endpoints, routing=args.routing, scrape_interval_s=scrape_interval_s)
    runner = await serve(gateway, host, port)
    scope = (
        "static endpoints"
        if static is not None
        else ("discovery in " + (", ".join(args.namespace) if args.namespace else "all namespaces"))
    )
    log.info(
        "gateway on %s:%d (%s), models: %s, routing %s",
        host,
        port,
        scope,
        ", ".join(endpoints.models()) or "none",
        args.routing,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping")
        await runner.cleanup()
        if isinstance(endpoints, KubeEndpoints):
            await endpoints.stop()
        if kube is not None:
            await kube.close()
