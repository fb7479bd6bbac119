"""A deduplicating work queue with per-key serialization and retry backoff.

kopf delivers watch events per object; children (Deployments, Services, PDBs)
and the periodic resync also need to reconcile their owner. Funnelling every
trigger through one queue keyed by (namespace, name) means a burst of events
yields one reconcile, and two reconciles of one object never overlap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

Key = tuple[str, str]
log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(
        self,
        handler: Callable[[Key], Awaitable[float | None]],
        workers: int = 4,
        base_backoff: float = 0.5,
        max_backoff: float = 60.0,
    ) -> None:
        """handler returns seconds until the key wants another look (None: only on events)."""
        self._handler = handler
        self._workers = workers
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._dirty: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, key: Key) -> None:
        if key in self._active:
            self._dirty.add(key)  # run again once the current pass ends
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, delay: float) -> None:
        """Schedule a look at key; an earlier schedule wins."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing.when() <= when:
                return
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def forget(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"reconcile-worker-{i}")
            for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            started = time.monotonic()
            try:
                again = await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                # The exponent is capped: 2.0 ** 1024 overflows, and an OverflowError
                # here would kill the worker after ~17 hours of one key failing.
                delay = min(self._base_backoff * 2.0 ** min(failures - 1, 64), self._max_backoff)
                log.exception(
                    "reconcile of %s/%s failed (attempt %d); retrying in %.1fs",
                    key[0],
                    key[1],
                    failures,
                    delay,
                )
                self.add_after(key, delay)
            else:
                self._failures.pop(key, None)
                if again is not None:
                    self.add_after(key, again)
            finally:
                self._active.discard(key)
                log.debug("reconciled %s/%s in %.3fs", key[0], key[1], time.monotonic() - started)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
