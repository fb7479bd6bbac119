"""`turnpike run`: wire the kube client, leader election, kopf and the work queue."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable
from typing import Any

import kopf

from turnpike.capacity.overcommit import PROMISING
from turnpike.controller.autoscaler import Autoscaler
from turnpike.controller.cache import Cache
from turnpike.controller.capacity import CapacityGate
from turnpike.controller.capacitytier import CapacityTierReconciler
from turnpike.controller.gateways import GatewayLoads
from turnpike.controller.handlers import build_registry
from turnpike.controller.leader import LeaderElector
from turnpike.controller.logs import configure
from turnpike.controller.metering import GpuMeter
from turnpike.controller.metrics import Metrics
from turnpike.controller.modeldeployment import ModelDeploymentReconciler
from turnpike.controller.nodewatch import NodeInventory, NodeReflector
from turnpike.controller.podwatch import PodReflector
from turnpike.controller.server import start_http
from turnpike.controller.settings import Settings
from turnpike.controller.workqueue import WorkQueue
from turnpike.kube import connect
from turnpike.kube.resources import plural_of_path

log = logging.getLogger("turnpike")


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False  # Turnpike posts its own, meaningful events
    settings.scanning.disabled = True  # no cluster-wide CRD/namespace listing (least privilege)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    return settings


def queue_tier(queue: WorkQueue, tier: str) -> None:
    queue.add(("", tier))


def queue_promising_tiers(queue: WorkQueue, cache: Cache) -> None:
    """The tiers whose Overcommitted condition follows the nodes' GPUs."""
    for name, body in list(cache.tiers.items()):
        if (body.get("spec") or {}).get("class") in PROMISING:
            queue.add(("", name))


async def run(settings: Settings) -> int:
    configure(settings.log_level, settings.log_format)
    metrics = Metrics()
    kube = await connect(
        settings.kubeconfig,
        on_write=lambda verb, path: metrics.api_writes.labels(verb, plural_of_path(path)).inc(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        log.info("signal received; shutting down")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    kopf_task: asyncio.Task[None] | None = None
    runner = await start_http(
        settings.metrics_bind_address,
        metrics,
        healthy=lambda: kopf_task is None or not kopf_task.done(),
    )
    elector = (
        LeaderElector(
            kube, settings.leader_election_id, settings.leader_election_namespace, settings.identity
        )
        if settings.leader_elect
        else None
    )
    queue: WorkQueue | None = None
    tier_queue: WorkQueue | None = None
    autoscaler: Autoscaler | None = None
    lost_leadership = False
    reflectors: list[asyncio.Task[None]] = []
    try:
        if elector is not None and not await elector.acquire(stop):
            return 0
        metrics.leader.set(1)
        # Renew from the moment the lease is held: priming the cache of a large
        # fleet can take longer than the lease lasts.
        keeper = asyncio.ensure_future(elector.keep(stop)) if elector else None
        cache = Cache()
        await cache.prime(kube, settings.namespaces)
        # Before the pod reflectors and the workers start: it listens to the cache and
        # takes over the tiers' stored hourly ledgers before any deployment resumes.
        meter = GpuMeter(cache)
        meter.attach()
        metrics.usage.read = meter.reading
        gate = CapacityGate(kube, cache, settings.default_tier, metrics=metrics)
        scopes: tuple[str | None, ...] = settings.namespaces or (None,)
        cache.expect_pods(scopes)
        reflectors = [
            asyncio.create_task(PodReflector(kube, cache, scope).run(stop)) for scope in scopes
        ]
        queued: list[WorkQueue] = []  # the deployments' queue, once it exists

        def on_held(key: tuple[str, str]) -> None:
            for work in queued:
                work.add(key)

        gateways = GatewayLoads(
            kube,
            on_held=on_held,
            urls=settings.gateway_urls,
            selector=settings.gateway_selector,
            namespace=settings.gateway_namespace,
            port=settings.gateway_port,
        )
        if gateways.configured:
            reflectors.append(asyncio.create_task(gateways.run(stop)))
        autoscaler = Autoscaler(
            kube,
            metrics,
            metrics_port=settings.triton_metrics_port,
            cache=cache,
            gateways=gateways if gateways.configured else None,
        )
        # A CapacityTier's status, PriorityClass and finalizer depend on every consumer
        # in the cluster: an operator scoped to some namespaces sees only its own and
        # would fight the cluster-wide operator over them, so it leaves tiers alone.
        on_tier_change: Callable[[str], None] | None = None
        if not settings.namespaces:
            nodes = NodeInventory()
            tier_queue = WorkQueue(
                CapacityTierReconciler(
                    kube, gate, metrics, settings.resync_seconds, meter=meter, nodes=nodes
                ),
                workers=1,
            )
            on_tier_change = functools.partial(queue_tier, tier_queue)
            # Nodes only matter to tiers: a scoped operator never watches them. The first
            # LIST, and every change of a node's GPUs, has the promising tiers look again.
            nodes.on_change = functools.partial(queue_promising_tiers, tier_queue, cache)
            reflectors.append(asyncio.create_task(NodeReflector(kube, nodes).run(stop)))
        queue = WorkQueue(
            ModelDeploymentReconciler(
                kube,
                metrics,
                settings.resync_seconds,
                autoscaler,
                gate=gate,
                cache=cache,
                on_tier_change=on_tier_change,
                meter=meter,
            ),
            workers=settings.workers,
        )
        queued.append(queue)
        queue.start()
        if tier_queue is not None:
            tier_queue.start()
        kopf_stop = asyncio.Event()
        kopf_ready = asyncio.Event()
        kopf_task = asyncio.create_task(
            kopf.operator(
                registry=build_registry(kube, queue, tier_queue, cache),
                settings=kopf_settings(),
                standalone=True,
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
                stop_flag=kopf_stop,
                ready_flag=kopf_ready,
            )
        )
        await asyncio.wait(
            [asyncio.create_task(kopf_ready.wait()), kopf_task], return_when=asyncio.FIRST_COMPLETED
        )
        # kopf installs its own signal handlers at startup; take them back so a
        # SIGTERM goes through the orderly path below (and releases the lease).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        log.info("operator started", extra={"namespaces": settings.namespaces or "all"})
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait()), kopf_task]
        if keeper is not None:
            waiters.append(keeper)
        while not stop.is_set():
            depth_updater = asyncio.ensure_future(asyncio.sleep(1.0))
            done, _ = await asyncio.wait(
                [*waiters, depth_updater], return_when=asyncio.FIRST_COMPLETED
            )
            metrics.workqueue_depth.set(queue.depth)
            if kopf_task in done or (keeper is not None and keeper in done):
                lost_leadership = keeper is not None and keeper in done and not stop.is_set()
                break
        kopf_stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(kopf_task, 30)
        if kopf_task.done() and not kopf_task.cancelled() and kopf_task.exception() is not None:
            log.error("kopf stopped with an error: %s", kopf_task.exception())
            return 1
        return 1 if lost_leadership else 0
    finally:
        stop.set()  # ends the pod reflectors too
        for task in reflectors:
            task.cancel()
        if queue is not None:
            await queue.stop()
        if tier_queue is not None:
            await tier_queue.stop()
        if autoscaler is not None:
            await autoscaler.close()
        metrics.leader.set(0)
        if elector is not None:
            await elector.release()
        await runner.cleanup()
        await kube.close()
        log.info("stopped")
