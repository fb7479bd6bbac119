"""The nodes' GPUs, kept current by one LIST and a resumed watch (a reflector).

The tiers' Overcommitted condition compares dedicated and reserved budgets with
the GPUs the nodes have (:mod:`turnpike.capacity.overcommit`). Each node is
reduced on arrival to its product, allocatable GPUs and whether it takes new
pods (a few bytes, not the node object with its image list), and the tiers are
told only when that reduced view changes: the kubelet's status updates and
lease renewals of an unchanged node requeue nothing. Only an operator that
manages tiers (one that watches every namespace) runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from turnpike.capacity.overcommit import ClusterGpus, NodeGpus, node_gpus
from turnpike.kube import ApiError, Kube
from turnpike.kube.resources import NODE

log = logging.getLogger(__name__)
WATCH_SECONDS = 300
RETRY_SECONDS = (0.5, 1, 2, 5, 10)


class NodeInventory:
    """GPU nodes by name, reduced; ``gpus()`` is None until the first LIST landed."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.on_change = on_change
        self._nodes: dict[str, NodeGpus] = {}
        self._synced = False
        self._sums: ClusterGpus | None = None

    @property
    def synced(self) -> bool:
        return self._synced

    def gpus(self) -> ClusterGpus | None:
        if not self._synced:
            return None
        if self._sums is None:
            self._sums = ClusterGpus.of(self._nodes.values())
        return self._sums

    def replace(self, bodies: list[dict[str, Any]]) -> None:
        """A fresh LIST: these are all the nodes."""
        nodes = {}
        for body in bodies:
            reduced = node_gpus(body)
            if reduced is not None:
                nodes[str(body["metadata"]["name"])] = reduced
        changed = not self._synced or nodes != self._nodes
        self._nodes, self._synced = nodes, True
        if changed:
            self._changed()

    def seen(self, event: str, body: dict[str, Any]) -> None:
        name = str(body["metadata"]["name"])
        reduced = None if event == "DELETED" else node_gpus(body)
        if reduced == self._nodes.get(name):
            return
        if reduced is None:
            del self._nodes[name]
        else:
            self._nodes[name] = reduced
        if self._synced:
            self._changed()

    def _changed(self) -> None:
        self._sums = None
        if self.on_change is not None:
            self.on_change()


class NodeReflector:
    def __init__(self, kube: Kube, inventory: NodeInventory) -> None:
        self.kube = kube
        self.inventory = inventory

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                resume: str | None = await self._relist()
                failures = 0
                while not stop.is_set() and resume is not None:
                    resume = await self._watch(resume)
            except Exception as error:  # any: a dead watch would freeze the inventory
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                expected = isinstance(error, (TimeoutError, ApiError, aiohttp.ClientError, OSError))
                log.log(
                    logging.WARNING if expected else logging.ERROR,
                    "node watch failed (%r); listing again in %ss",
                    error,
                    delay,
                    exc_info=not expected,
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _relist(self) -> str:
        items, version = await self.kube.list_with_version(NODE)
        self.inventory.replace(items)
        return version

    async def _watch(self, version: str) -> str | None:
        """Events from ``version`` on; the version to resume from, or None to relist."""
        async for event, obj in self.kube.watch(
            NODE, None, None, WATCH_SECONDS, resource_version=version
        ):
            if event == "ERROR":
                # 410 Gone: the version fell out of the watch cache; list afresh.
                log.info("node watch expired (%s); listing again", obj.get("message"))
                return None
            version = str(obj.get("metadata", {}).get("resourceVersion", version))
            if event != "BOOKMARK":
                self.inventory.seen(event, obj)
        return version
