"""The gateway's endpoints from the API server: ModelDeployments and their ready pods.

The shell around :class:`~turnpike.gateway.discovery.Discovery`: one reflector for
ModelDeployments and one for the pods Turnpike manages, per namespace scope,
each listing once and then watching. Pods are read directly rather than through
the Service or its EndpointSlices: the gateway needs each replica (to route by
its outstanding work and scrape its queue), and a pod's Ready condition is the
same fact EndpointSlices copy, a hop earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from turnpike.gateway.discovery import Discovery
from turnpike.gateway.endpoints import Fleet, Listener
from turnpike.kube import Kube
from turnpike.kube.reflector import Feed, Reflector
from turnpike.kube.resources import MODEL_DEPLOYMENT, POD
from turnpike.render.labels import LABEL_MANAGED_BY, MANAGER

log = logging.getLogger(__name__)
POD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGER}"


class KubeEndpoints:
    """:class:`~turnpike.gateway.endpoints.Endpoints` kept current by list and watch."""

    def __init__(self, kube: Kube, namespaces: Sequence[str | None] = (None,)) -> None:
        self.discovery = Discovery()
        self._listeners: list[Listener] = []
        self._reflectors: list[Reflector] = []
        for scope in namespaces or (None,):
            self._reflectors += self._feeds(kube, scope)
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    def _feeds(self, kube: Kube, scope: str | None) -> list[Reflector]:
        found = self.discovery

        def deployments_listed(items: list[dict[str, Any]]) -> None:
            self._changed(found.replace_deployments(items, scope))

        def deployment_seen(event: str, obj: dict[str, Any]) -> None:
            self._changed(found.deployment_seen(event, obj))

        def pods_listed(items: list[dict[str, Any]]) -> None:
            self._changed(found.replace_pods(items, scope))

        def pod_seen(event: str, obj: dict[str, Any]) -> None:
            self._changed(found.pod_seen(event, obj))

        return [
            Feed(kube, MODEL_DEPLOYMENT, deployments_listed, deployment_seen, namespace=scope),
            Feed(kube, POD, pods_listed, pod_seen, namespace=scope, selector=POD_SELECTOR),
        ]

    # -- Endpoints ---------------------------------------------------------------

    def fleet(self, model: str) -> Fleet | None:
        return self.discovery.fleet(model)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def models(self) -> tuple[str, ...]:
        return self.discovery.models()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start watching; return once every scope was listed (a model that exists is
        never answered 404 because the gateway had not looked yet)."""
        self._tasks = [asyncio.create_task(r.run(self._stop)) for r in self._reflectors]
        waits = [asyncio.create_task(r.synced.wait()) for r in self._reflectors]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        except TimeoutError:
            await self.stop()
            raise TimeoutError(
                f"the API server did not list ModelDeployments and pods within {timeout_s:g} s"
            ) from None

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _changed(self, models: set[str]) -> None:
        for model in sorted(models):
            for listener in list(self._listeners):
                try:
                    listener(model)
                except Exception:  # a listener's bug must not stop the watch
                    log.exception("endpoint listener failed for %s", model)
