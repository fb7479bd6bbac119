"""The pod reflector: one LIST, then a watch resumed from the last version, and a
fresh LIST when the server says that version is gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from tests.unit.builders import ready_pod
from turnpike.controller.cache import Cache
from turnpike.controller.podwatch import SELECTOR, PodReflector
from turnpike.kube import Kube
from turnpike.kube.resources import Resource


def pod(i: int, rv: str, owner: str = "llama") -> dict[str, Any]:
    body = ready_pod(i, owner)
    body["metadata"]["resourceVersion"] = rv
    body["spec"] = {"containers": [{"name": "triton", "image": "x" * 1000}]}
    return body


class ScriptedKube:
    """Answers LISTs and watches from scripts; records what was asked."""

    def __init__(self, lists: list[list[dict[str, Any]]],
                 watches: list[list[tuple[str, dict[str, Any]]]], stop: asyncio.Event) -> None:
        self.lists, self.watches, self.stop = lists, watches, stop
        self.asked: list[tuple[str, str | None]] = []

    async def list_with_version(
        self, resource: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        assert label_selector == SELECTOR
        self.asked.append(("list", None))
        items = self.lists.pop(0)
        return items, str(100 + len(self.asked))

    async def watch(
        self, resource: Resource, namespace: str | None, label_selector: str | None,
        timeout_seconds: int, resource_version: str | None = None,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.asked.append(("watch", resource_version))
        if not self.watches:
            self.stop.set()
            return
        for event in self.watches.pop(0):
            yield event


def run_reflector(lists: list[list[dict[str, Any]]],
                  watches: list[list[tuple[str, dict[str, Any]]]]) -> tuple[Cache, ScriptedKube]:
    cache = Cache()
    cache.expect_pods((None,))

    async def scenario() -> ScriptedKube:
        stop = asyncio.Event()
        kube = ScriptedKube(lists, watches, stop)
        await asyncio.wait_for(PodReflector(cast(Kube, kube), cache).run(stop), 5)
        return kube

    return cache, asyncio.run(scenario())


def test_events_after_the_list_keep_the_pods_current_and_resume_where_they_left() -> None:
    cache, kube = run_reflector(
        [[pod(0, "10"), pod(1, "11")]],
        [
            [("DELETED", pod(0, "12")), ("BOOKMARK", {"metadata": {"resourceVersion": "20"}})],
            [("ADDED", pod(2, "21")), ("ADDED", pod(0, "1", owner="other"))],
        ],
    )
    assert cache.pods_synced
    assert [p["metadata"]["name"] for p in cache.pods_of("team-a", "llama")] == [
        "llama-1", "llama-2"]
    assert [p["metadata"]["name"] for p in cache.pods_of("team-a", "other")] == ["other-0"]
    # Resumed from the list's version, then from the bookmark, then from the last event.
    assert kube.asked == [("list", None), ("watch", "101"), ("watch", "20"), ("watch", "1")]
    kept = cache.pods_of("team-a", "llama")[0]
    # Trimmed to what is read: of the spec, only the containers' GPUs (none here).
    assert kept["spec"] == {"containers": []} and kept["status"]["podIP"]


def test_an_expired_version_means_a_fresh_list_that_forgets_vanished_pods() -> None:
    gone = {"kind": "Status", "code": 410, "message": "too old resource version"}
    cache, kube = run_reflector(
        [[pod(0, "10"), pod(1, "11")], [pod(1, "30")]],
        [[("ERROR", gone)]],
    )
    assert [p["metadata"]["name"] for p in cache.pods_of("team-a", "llama")] == ["llama-1"]
    assert [a[0] for a in kube.asked] == ["list", "watch", "list", "watch"]


def test_readers_fall_back_to_a_list_until_every_scope_has_listed() -> None:
    cache = Cache()
    assert not cache.pods_synced  # no reflector at all
    cache.expect_pods(("a", "b"))
    cache.replace_pods([pod(0, "1")], "team-a")
    cache.replace_pods([], "a")
    assert not cache.pods_synced
    cache.replace_pods([], "b")
    assert cache.pods_synced
