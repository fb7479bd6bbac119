"""One LIST, then a watch resumed from the last version: the loop the operator's pod
and node caches and the gateway's view of ready replicas are kept current by
(client-go's reflector, in small).

A subclass says what to LIST and WATCH and what to do with the items; the loop
resumes the watch from the last resourceVersion or bookmark, lists afresh when
the server says that version is gone (410), and retries any failure with
backoff: a reflector that died would leave its cache frozen without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from turnpike.kube import ApiError, Kube
from turnpike.kube.resources import Resource

log = logging.getLogger(__name__)
WATCH_SECONDS = 300
RETRY_SECONDS = (0.5, 1, 2, 5, 10)
EXPECTED_ERRORS = (TimeoutError, ApiError, aiohttp.ClientError, OSError)


class Reflector:
    resource: Resource
    what = "objects"

    def __init__(
        self, kube: Kube, namespace: str | None = None, selector: str | None = None
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.selector = selector
        self.synced = asyncio.Event()  # set once the first LIST has been handed over

    def listed(self, items: list[dict[str, Any]]) -> None:
        """Everything the LIST returned: replaces what was known."""
        raise NotImplementedError

    def seen(self, event: str, obj: dict[str, Any]) -> None:
        """One ADDED, MODIFIED or DELETED event."""
        raise NotImplementedError

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                resume: str | None = await self._relist()
                failures = 0
                while not stop.is_set() and resume is not None:
                    resume = await self._watch(resume)
            except Exception as error:  # any: a dead reflector would freeze its cache
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                expected = isinstance(error, EXPECTED_ERRORS)
                log.log(
                    logging.WARNING if expected else logging.ERROR,
                    "%s watch failed (%r); listing again in %ss",
                    self.what,
                    error,
                    delay,
                    exc_info=not expected,
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _relist(self) -> str:
        items, version = await self.kube.list_with_version(
            self.resource, self.namespace, self.selector
        )
        self.listed(items)
        self.synced.set()
        return version

    async def _watch(self, version: str) -> str | None:
        """Events from ``version`` on; the version to resume from, or None to relist."""
        async for event, obj in self.kube.watch(
            self.resource,
            self.namespace,
            self.selector,
            WATCH_SECONDS,
            resource_version=version,
        ):
            if event == "ERROR":
                # 410 Gone: the version fell out of the watch cache; list afresh.
                log.info("%s watch expired (%s); listing again", self.what, obj.get("message"))
                return None
            version = str(obj.get("metadata", {}).get("resourceVersion", version))
            if event != "BOOKMARK":
                self.seen(event, obj)
        return version


Listed = Callable[[list[dict[str, Any]]], None]
Seen = Callable[[str, dict[str, Any]], None]


class Feed(Reflector):
    """A reflector that hands what it lists and sees to two callbacks."""

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        on_list: Listed,
        on_event: Seen,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        what: str | None = None,
    ) -> None:
        super().__init__(kube, namespace, selector)
        self.resource = resource
        self.what = what or resource.plural
        self._on_list = on_list
        self._on_event = on_event

    def listed(self, items: list[dict[str, Any]]) -> None:
        self._on_list(items)

    def seen(self, event: str, obj: dict[str, Any]) -> None:
        self._on_event(event, obj)
