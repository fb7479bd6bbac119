"""The kopf handlers run on the event loop, never in kopf's thread pool."""

from __future__ import annotations

import inspect
from typing import Any, cast

from turnpike.controller.cache import Cache
from turnpike.controller.handlers import build_registry
from turnpike.controller.workqueue import WorkQueue
from turnpike.kube import Kube


async def nothing(_: Any) -> None:
    return None


def test_every_watch_handler_is_a_coroutine() -> None:
    """kopf runs a plain function in a thread: the cache would then change while
    the loop iterates it (at 5,000 ModelDeployments the tier reconciler failed
    with "dictionary changed size during iteration")."""
    registry = build_registry(cast(Kube, object()), WorkQueue(nothing), WorkQueue(nothing), Cache())
    handlers = list(registry._watching.get_all_handlers())
    assert len(handlers) == 5  # ModelDeployments, CapacityTiers, three kinds of children
    assert all(inspect.iscoroutinefunction(h.fn) for h in handlers)
