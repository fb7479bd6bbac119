"""Keep the cache's pods current with one LIST and a resumed watch (a reflector).

The autoscaler needs a ModelDeployment's pods at every tick; a LIST per tick
costs the API server O(fleet) requests per scrape interval. This watches the
pods Turnpike manages (a server-side label selector, so other pods of the
cluster never reach the operator), resumes from the last resourceVersion or
bookmark, and lists again when the server says that version is gone (410).
Until every scope's first LIST has landed the cache says pods_synced=False and
readers fall back to their own LIST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from turnpike.controller.cache import Cache
from turnpike.kube import ApiError, Kube
from turnpike.kube.resources import POD
from turnpike.render.labels import LABEL_MANAGED_BY, MANAGER

log = logging.getLogger(__name__)
SELECTOR = f"{LABEL_MANAGED_BY}={MANAGER}"
WATCH_SECONDS = 300
RETRY_SECONDS = (0.5, 1, 2, 5, 10)


class PodReflector:
    def __init__(self, kube: Kube, cache: Cache, namespace: str | None = None) -> None:
        self.kube = kube
        self.cache = cache
        self.namespace = namespace

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                resume: str | None = await self._relist()
                failures = 0
                while not stop.is_set() and resume is not None:
                    resume = await self._watch(resume)
            except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as error:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                log.warning("pod watch failed (%s); retrying in %ss", error, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _relist(self) -> str:
        items, version = await self.kube.list_with_version(POD, self.namespace, SELECTOR)
        self.cache.replace_pods(items, self.namespace)
        return version

    async def _watch(self, version: str) -> str | None:
        """Events from ``version`` on; the version to resume from, or None to relist."""
        async for event, obj in self.kube.watch(
            POD, self.namespace, SELECTOR, WATCH_SECONDS, resource_version=version
        ):
            if event == "ERROR":
                # 410 Gone: the version fell out of the watch cache; list afresh.
                log.info("pod watch expired (%s); listing again", obj.get("message"))
                return None
            version = str(obj.get("metadata", {}).get("resourceVersion", version))
            if event != "BOOKMARK":
                self.cache.pod_seen(event, obj)
        return version
