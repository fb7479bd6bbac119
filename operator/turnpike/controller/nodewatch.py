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

from collections.abc import Callable
from typing import Any

from turnpike.capacity.overcommit import ClusterGpus, NodeGpus, node_gpus
from turnpike.kube import Kube
from turnpike.kube.reflector import Reflector
from turnpike.kube.resources import NODE


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


class NodeReflector(Reflector):
    resource = NODE
    what = "node"

    def __init__(self, kube: Kube, inventory: NodeInventory) -> None:
        super().__init__(kube)
        self.inventory = inventory

    def listed(self, items: list[dict[str, Any]]) -> None:
        self.inventory.replace(items)

    def seen(self, event: str, obj: dict[str, Any]) -> None:
        self.inventory.seen(event, obj)
