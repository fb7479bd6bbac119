"""The nodes' GPUs in the operator: the inventory, its reflector, and the tiers'
Overcommitted condition requeued and written when nodes or budgets change."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any, cast

from tests.unit.builders import tier
from tests.unit.fakekube import FakeKube, cache_fed_by
from turnpike.capacity.overcommit import NodeGpus
from turnpike.controller.cache import Cache
from turnpike.controller.capacity import CapacityGate
from turnpike.controller.capacitytier import CapacityTierReconciler
from turnpike.controller.handlers import build_registry
from turnpike.controller.metrics import Metrics
from turnpike.controller.nodewatch import NodeInventory, NodeReflector
from turnpike.controller.operator import queue_promising_tiers
from turnpike.controller.workqueue import WorkQueue
from turnpike.kube import Kube
from turnpike.kube.resources import NODE, Resource

A100 = "NVIDIA-A100-SXM4-80GB"


def node(name: str, gpus: int = 4, rv: str = "1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "resourceVersion": rv,
            "labels": {"nvidia.com/gpu.product": A100},
        },
        "spec": spec,
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True"}],
            "images": [{"names": ["x" * 200]}] * 20,
        },
    }


def heartbeat(body: dict[str, Any], rv: str) -> dict[str, Any]:
    """The same node, as the kubelet's periodic status update shows it."""
    body = copy.deepcopy(body)
    body["metadata"]["resourceVersion"] = rv
    body["status"]["conditions"][0]["lastHeartbeatTime"] = f"2026-01-01T00:00:{rv}Z"
    return body


def test_the_inventory_is_unknown_until_listed_and_tells_only_real_changes() -> None:
    told: list[int] = []
    inventory = NodeInventory(on_change=lambda: told.append(1))
    inventory.seen("ADDED", node("early"))  # a watch event before the LIST: no news yet
    assert inventory.gpus() is None and not told
    inventory.replace([node("a"), node("b"), node("cpu", gpus=0)])
    assert inventory.synced and len(told) == 1
    gpus = inventory.gpus()
    assert gpus is not None and dict(gpus.usable) == {A100: 8}

    inventory.seen("MODIFIED", heartbeat(node("a"), "2"))
    inventory.seen("MODIFIED", heartbeat(node("cpu", gpus=0), "2"))
    inventory.replace([node("a"), node("b"), node("cpu", gpus=0)])  # a relist of the same
    assert len(told) == 1

    inventory.seen("MODIFIED", node("a", rv="3", unschedulable=True))  # cordoned
    assert len(told) == 2
    gpus = inventory.gpus()
    assert gpus is not None and dict(gpus.usable) == {A100: 4}
    assert dict(gpus.left_out) == {A100: 4}
    inventory.seen("DELETED", node("b"))
    inventory.seen("DELETED", node("never-seen", gpus=0))
    assert len(told) == 3
    gpus = inventory.gpus()
    assert gpus is not None and dict(gpus.usable) == {}


class ScriptedKube:
    def __init__(
        self,
        lists: list[list[dict[str, Any]]],
        watches: list[list[tuple[str, dict[str, Any]]]],
        stop: asyncio.Event,
    ) -> None:
        self.lists, self.watches, self.stop = lists, watches, stop
        self.asked: list[tuple[str, str | None]] = []

    async def list_with_version(
        self, resource: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        assert resource is NODE and namespace is None and label_selector is None
        self.asked.append(("list", None))
        return self.lists.pop(0), str(100 + len(self.asked))

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        label_selector: str | None,
        timeout_seconds: int,
        resource_version: str | None = None,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        assert resource is NODE
        self.asked.append(("watch", resource_version))
        if not self.watches:
            self.stop.set()
            return
        for event in self.watches.pop(0):
            yield event


def test_the_reflector_lists_watches_resumes_and_lists_again_when_told() -> None:
    inventory = NodeInventory()

    async def scenario() -> ScriptedKube:
        stop = asyncio.Event()
        kube = ScriptedKube(
            [[node("a")], [node("a"), node("c", gpus=2)]],
            [
                [
                    ("ADDED", node("b", rv="5")),
                    ("BOOKMARK", {"metadata": {"resourceVersion": "9"}}),
                ],
                [("ERROR", {"code": 410, "message": "too old resource version"})],
            ],
            stop,
        )
        await asyncio.wait_for(NodeReflector(cast(Kube, kube), inventory).run(stop), 5)
        return kube

    kube = asyncio.run(scenario())
    assert kube.asked == [("list", None), ("watch", "101"), ("watch", "9"), ("list", None),
                          ("watch", "104")]  # fmt: skip
    gpus = inventory.gpus()
    assert gpus is not None and dict(gpus.usable) == {A100: 6}  # b went with the relist
    assert inventory._nodes["c"] == NodeGpus(A100, 2, True)


def reserved(name: str, gpus: int) -> dict[str, Any]:
    body = tier(gpus, name).tier_class("reserved").build()
    body["spec"]["gpuBudget"] = {A100: gpus}
    return body


def overcommitted(kube: FakeKube, name: str) -> dict[str, Any] | None:
    conditions = kube.status("CapacityTier", None, name).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Overcommitted"), None)


def test_the_tier_reconciler_reports_and_clears_overcommitted_budgets() -> None:
    kube = FakeKube()
    kube.add(reserved("search", 6), reserved("chat", 4), tier(100, "cheap").build())
    cache = cache_fed_by(kube)
    metrics = Metrics()
    gate = CapacityGate(cast(Kube, kube), cache, metrics=metrics)
    nodes = NodeInventory()
    reconciler = CapacityTierReconciler(
        cast(Kube, kube), gate, metrics, min_interval_seconds=0, pass_share=0, nodes=nodes
    )

    async def reconcile_all() -> None:
        for name in ("search", "chat", "cheap"):
            await reconciler.reconcile(name)

    asyncio.run(reconcile_all())
    assert overcommitted(kube, "search") is None  # nodes not known yet: nothing said

    nodes.replace([node("a100-0"), node("a100-1")])
    asyncio.run(reconcile_all())
    for name in ("search", "chat"):
        c = overcommitted(kube, name)
        assert c is not None and (c["status"], c["reason"]) == ("True", "BudgetsExceedNodes")
        assert c["message"] == (
            f"{A100} budgets total 10 but nodes have 8 GPUs; "
            "dedicated and reserved tiers: chat, search"
        )
    assert overcommitted(kube, "cheap") is None  # on-demand promises nothing

    nodes.seen("ADDED", node("a100-2"))
    asyncio.run(reconcile_all())
    for name in ("search", "chat"):
        c = overcommitted(kube, name)
        assert c is not None and (c["status"], c["reason"]) == ("False", "WithinCapacity")


def test_node_and_tier_changes_requeue_the_promising_tiers() -> None:
    async def nothing(_: Any) -> None:
        return None

    async def scenario() -> None:
        cache = Cache()
        for body in (reserved("search", 6), reserved("chat", 4), tier(100, "cheap").build()):
            cache.tier_seen("ADDED", body)
        tiers = WorkQueue(nothing)
        queue_promising_tiers(tiers, cache)
        assert tiers._queued == {("", "search"), ("", "chat")}

        tiers = WorkQueue(nothing)
        registry = build_registry(cast(Kube, object()), WorkQueue(nothing), tiers, cache)
        (handler,) = [
            cast(Any, h.fn)
            for h in registry._watching.get_all_handlers()
            if "capacity_tier_event" in getattr(h.fn, "__name__", "")
        ]
        changed = reserved("chat", 2)
        changed["metadata"]["generation"] = 2
        await handler(type="MODIFIED", event={"object": changed}, name="chat")
        assert tiers._queued == {("", "search"), ("", "chat")}

    asyncio.run(scenario())
