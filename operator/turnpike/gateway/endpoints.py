"""Where a model's ready replicas are: the Protocol the shell asks, and a static source.

The gateway routes to pods, not to a Service, so it must know each ready pod.
Anything that can answer "the ready pods of this model, now" and say when
that changed can serve: the static map here (``--static-endpoints``, tests),
or the watch of ModelDeployments and their pods (:mod:`turnpike.gateway.watched`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

Listener = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ready replica's Triton: HTTP port, and metrics port when known."""

    host: str
    port: int
    metrics_port: int | None = None
    name: str = ""

    @property
    def key(self) -> str:
        """Stable identity for load accounting: the pod's name, else its address."""
        return self.name or f"{self.authority}"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.authority}{path}"

    def metrics_url(self) -> str | None:
        if self.metrics_port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.metrics_port}/metrics"


@dataclass(frozen=True, slots=True)
class Fleet:
    """A model's deployment as routing sees it."""

    deployment: str
    ready: tuple[Endpoint, ...]
    # What the deployment may grow to; None: ask the gateway's configuration.
    max_replicas: int | None = None
    # The model's name inside Triton, when discovery knows it.
    upstream: str | None = None
    # spec.slo's request-latency threshold (ms): the gateway counts requests
    # within it for the operator's SLO meter (see gateway/load.py).
    slo_threshold_ms: float | None = None


class Endpoints(Protocol):
    def fleet(self, model: str) -> Fleet | None:
        """The fleet serving ``model``; None when no deployment serves it (404)."""
        ...

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(model)`` after the ready set serving ``model`` changed."""
        ...

    def models(self) -> tuple[str, ...]:
        """Every name a fleet answers to now."""
        ...


class StaticEndpoints:
    """A fixed map of model -> endpoints, which tests (and operators) may change."""

    def __init__(self, fleets: Mapping[str, Iterable[Endpoint]] | None = None) -> None:
        self._fleets: dict[str, tuple[Endpoint, ...]] = {
            model: tuple(eps) for model, eps in (fleets or {}).items()
        }
        self._listeners: list[Listener] = []

    def fleet(self, model: str) -> Fleet | None:
        ready = self._fleets.get(model)
        return None if ready is None else Fleet(model, ready)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def set(self, model: str, endpoints: Iterable[Endpoint]) -> None:
        self._fleets[model] = tuple(endpoints)
        for listener in list(self._listeners):
            listener(model)

    def models(self) -> tuple[str, ...]:
        return tuple(self._fleets)


def parse_static(spec: str) -> dict[str, tuple[Endpoint, ...]]:
    """``model=host:port[@metricsport],...``; ``model=`` alone declares a model at zero.

    Repeating a model adds replicas. IPv6 hosts go in brackets.
    """
    fleets: dict[str, list[Endpoint]] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        model, eq, address = item.partition("=")
        model = model.strip()
        if not eq or not model:
            raise ValueError(f"{item!r} is not model=host:port")
        replicas = fleets.setdefault(model, [])
        if address.strip():
            replicas.append(_endpoint(address.strip(), len(replicas), model))
    return {model: tuple(eps) for model, eps in fleets.items()}


def _endpoint(address: str, index: int, model: str) -> Endpoint:
    address, at, metrics = address.partition("@")
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not host:
        raise ValueError(f"{address!r} is not host:port")
    host = host.removeprefix("[").removesuffix("]")
    if ":" in host:
        ipaddress.IPv6Address(host)  # raises ValueError for nonsense
    ports = [int(port)] + ([int(metrics)] if at and metrics.isdigit() else [])
    if at and not metrics.isdigit():
        raise ValueError(f"{metrics!r} is not a metrics port")
    if not all(0 < p < 65536 for p in ports):
        raise ValueError(f"port out of range in {address!r}")
    return Endpoint(host, ports[0], ports[1] if len(ports) > 1 else None, f"{model}-{index}")
