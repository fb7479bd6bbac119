"""Operator settings from flags and TURNPIKE_* environment variables."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    kubeconfig: str | None
    namespaces: tuple[str, ...]
    metrics_bind_address: str
    leader_elect: bool
    leader_election_namespace: str
    leader_election_id: str
    identity: str
    workers: int
    resync_seconds: float
    log_level: str
    log_format: str
    triton_metrics_port: int = 8002
    default_tier: str | None = None
    # Where the gateways are (scale from zero): their pods by label, or fixed URLs.
    gateway_selector: str | None = None
    gateway_namespace: str | None = None
    gateway_port: int = 8080
    gateway_urls: tuple[str, ...] = ()


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TURNPIKE_{name}", default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        help="kubeconfig path (default: $KUBECONFIG, else in-cluster)",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        default=[n for n in _env("NAMESPACES", "").split(",") if n],
        help="watch only these namespaces (repeatable; default: all)",
    )
    parser.add_argument(
        "--metrics-bind-address",
        default=_env("METRICS_BIND_ADDRESS", ":8080"),
        help="host:port of /metrics and /healthz (default :8080)",
    )
    parser.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=_env("LEADER_ELECT", "true") == "true",
        help="hold a Lease so only one replica acts (default: on)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=_env(
            "LEADER_ELECTION_NAMESPACE", os.environ.get("POD_NAMESPACE", "turnpike-system")
        ),
    )
    parser.add_argument("--leader-election-id", default=_env("LEADER_ELECTION_ID", "turnpike"))
    parser.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME", socket.gethostname()),
        help="this replica's name in the leader Lease",
    )
    parser.add_argument(
        "--workers", type=int, default=int(_env("WORKERS", "8")), help="concurrent reconciles"
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(_env("RESYNC_SECONDS", "60")),
        help="periodic drift repair of every object",
    )
    parser.add_argument(
        "--triton-metrics-port",
        type=int,
        default=int(_env("TRITON_METRICS_PORT", "8002")),
        help="port of Triton's metrics endpoint on each pod (default 8002)",
    )
    parser.add_argument(
        "--default-tier",
        default=_env("DEFAULT_TIER", "") or None,
        help="CapacityTier for ModelDeployments that name none (default: the tier "
        "marked spec.default)",
    )
    parser.add_argument(
        "--gateway-selector",
        default=_env("GATEWAY_SELECTOR", "") or None,
        metavar="LABELS",
        help="label selector of the turnpike gateway pods, whose held requests wake "
        "deployments at zero (the chart sets it)",
    )
    parser.add_argument(
        "--gateway-namespace",
        default=_env("GATEWAY_NAMESPACE", "") or None,
        help="namespace of the gateway pods (default: all namespaces)",
    )
    parser.add_argument(
        "--gateway-port",
        type=int,
        default=int(_env("GATEWAY_PORT", "8080")),
        help="port the gateway pods serve on (default 8080)",
    )
    parser.add_argument(
        "--gateway-url",
        action="append",
        dest="gateway_urls",
        default=[u for u in _env("GATEWAY_URLS", "").split(",") if u],
        metavar="URL",
        help="a gateway's load document, e.g. http://127.0.0.1:8080/turnpike/load "
        "(repeatable; for gateways outside the cluster)",
    )
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    parser.add_argument(
        "--log-format", default=_env("LOG_FORMAT", "json"), choices=["json", "text"]
    )


def from_arguments(args: argparse.Namespace) -> Settings:
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.resync_seconds <= 0:
        raise SystemExit("--resync-seconds must be positive")
    if not 0 < args.gateway_port < 65536:
        raise SystemExit("--gateway-port must be a port number")
    for url in args.gateway_urls:
        if not url.startswith(("http://", "https://")):
            raise SystemExit(f"--gateway-url {url!r} is not an http(s) URL")
    return Settings(
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.namespaces),
        metrics_bind_address=args.metrics_bind_address,
        leader_elect=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_id=args.leader_election_id,
        identity=args.identity,
        workers=args.workers,
        resync_seconds=args.resync_seconds,
        log_level=args.log_level,
        log_format=args.log_format,
        triton_metrics_port=args.triton_metrics_port,
        default_tier=args.default_tier,
        gateway_selector=args.gateway_selector,
        gateway_namespace=args.gateway_namespace,
        gateway_port=args.gateway_port,
        gateway_urls=tuple(args.gateway_urls),
    )
