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

from typing import Any

from turnpike.controller.cache import Cache
from turnpike.kube import Kube
from turnpike.kube.reflector import Reflector
from turnpike.kube.resources import POD
from turnpike.render.labels import LABEL_MANAGED_BY, MANAGER

SELECTOR = f"{LABEL_MANAGED_BY}={MANAGER}"


class PodReflector(Reflector):
    resource = POD
    what = "pod"

    def __init__(self, kube: Kube, cache: Cache, namespace: str | None = None) -> None:
        super().__init__(kube, namespace, SELECTOR)
        self.cache = cache

    def listed(self, items: list[dict[str, Any]]) -> None:
        self.cache.replace_pods(items, self.namespace)

    def seen(self, event: str, obj: dict[str, Any]) -> None:
        self.cache.pod_seen(event, obj)
