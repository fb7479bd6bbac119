"""The reconcile work queue, as a user of the operator sees it.

One reconcile per burst of events, never two at once for one object, retries that
back off (and stop backing off after a success), resyncs on schedule, and nothing
after shutdown. Every wait is bounded: a queue that loses or stalls work fails a
test by timeout instead of hanging it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from itertools import pairwise
from typing import Any

import pytest

from turnpike.controller.workqueue import Key, WorkQueue

A: Key = ("team-a", "llama")
B: Key = ("team-b", "mistral")
MARK: Key = ("", "mark")  # a key whose pass proves everything queued before it has run
LAST: Key = ("", "last")
Outcome = float | Exception | None


def run(scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 5.0) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def failure() -> Exception:
    return RuntimeError("server-side apply failed")


class Handler:
    """A reconcile stand-in: records each pass, plays a script of outcomes, can hold passes."""

    def __init__(self, script: Sequence[Outcome] = (), pause: float = 0.0) -> None:
        self.script = list(script)
        self.pause = pause
        self.hold = asyncio.Event()
        self.hold.set()  # clear it to keep passes open
        self.calls: list[Key] = []
        self.times: list[float] = []
        self.finished: list[tuple[Key, float]] = []  # (key, when that pass began)
        self.running: Counter[Key] = Counter()
        self.peak: Counter[Key] = Counter()
        self.cancelled = 0
        self._changed = asyncio.Event()

    async def __call__(self, key: Key) -> float | None:
        began = asyncio.get_running_loop().time()
        self.calls.append(key)
        self.times.append(began)
        self.running[key] += 1
        self.peak[key] = max(self.peak[key], self.running[key])
        self._changed.set()
        try:
            await self.hold.wait()
            await asyncio.sleep(self.pause)
            outcome = self.script.pop(0) if self.script else None
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running[key] -= 1
            self.finished.append((key, began))
            self._changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._changed.clear()
            await self._changed.wait()


def scheduled_delays(queue: WorkQueue) -> list[float]:
    """The delays of the timers the queue sets (it schedules with loop.call_at)."""
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    call_at = loop.call_at

    def spy(when: float, callback: Any, *args: Any, context: Any = None) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None) is queue:
            delays.append(when - loop.time())
        return call_at(when, callback, *args, context=context)

    loop.call_at = spy  # type: ignore[method-assign, assignment]
    return delays


def test_a_burst_of_events_for_a_queued_object_yields_one_reconcile() -> None:
    async def scenario() -> None:
        handler = Handler()
        queue = WorkQueue(handler, workers=1)
        for _ in range(10):
            queue.add(A)
        queue.add(MARK)
        assert queue.depth == 2
        queue.start()
        try:
            await handler.until(lambda: MARK in handler.calls)
        finally:
            await queue.stop()
        assert handler.calls == [A, MARK]

    run(scenario)


def test_passes_of_one_object_never_overlap() -> None:
    """Four workers and events arriving faster than a pass takes: still one pass at a time."""

    async def scenario() -> None:
        handler = Handler(pause=0.003)
        queue = WorkQueue(handler, workers=4)
        queue.start()
        loop = asyncio.get_running_loop()
        try:
            for i in range(40):
                if i:
                    await asyncio.sleep(0.001)
                queue.add(A)
                queue.add(B)
            last_add = loop.time()
            # Each key owes one pass that began after the last event, and no more.
            await handler.until(
                lambda: all(
                    any(k == key and began >= last_add for k, began in handler.finished)
                    for key in (A, B)
                )
            )
        finally:
            await queue.stop()
        assert handler.peak == {A: 1, B: 1}
        assert len(handler.calls) < 80  # events during a pass collapsed into one more pass

    run(scenario)


def test_different_objects_reconcile_concurrently() -> None:
    async def scenario() -> None:
        handler = Handler()
        handler.hold.clear()
        queue = WorkQueue(handler, workers=2)
        queue.start()
        queue.add(A)
        queue.add(B)
        try:
            # Both passes must be open at once; a queue that ran one at a time times out here.
            await asyncio.wait_for(handler.until(lambda: bool(handler.running[B])), 1.0)
            assert handler.running[A] == 1
        finally:
            handler.hold.set()
            await queue.stop()

    run(scenario)


def test_an_event_during_a_pass_runs_the_object_once_more_after_it() -> None:
    async def scenario() -> None:
        handler = Handler()
        handler.hold.clear()
        queue = WorkQueue(handler, workers=1)
        queue.start()
        try:
            queue.add(A)
            await handler.until(lambda: handler.running[A] == 1)
            for _ in range(3):
                queue.add(A)
            queue.add(MARK)
            handler.hold.set()
            await handler.until(lambda: len(handler.finished) == 3)
            queue.add(LAST)  # FIFO with one worker: a third pass of A would run before it
            await handler.until(lambda: len(handler.finished) == 4)
        finally:
            await queue.stop()
        assert Counter(handler.calls) == {A: 2, MARK: 1, LAST: 1}
        assert handler.calls[-1] == LAST
        assert handler.peak[A] == 1

    run(scenario)


def test_failures_back_off_exponentially_up_to_the_cap_and_reset_after_a_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="turnpike.controller.workqueue")

    async def scenario() -> None:
        handler = Handler([failure() for _ in range(5)] + [None, failure(), None])
        queue = WorkQueue(handler, workers=1, base_backoff=0.01, max_backoff=0.05)
        delays = scheduled_delays(queue)
        queue.start()
        try:
            queue.add(A)
            await handler.until(lambda: len(handler.finished) == 6)
            queue.add(A)  # a new event after the success: the next failure starts over
            await handler.until(lambda: len(handler.finished) == 8)
        finally:
            await queue.stop()
        expected = [0.01, 0.02, 0.04, 0.05, 0.05, 0.01]
        assert delays == pytest.approx(expected, abs=0.003)
        gaps = [later - earlier for earlier, later in pairwise(handler.times[:6])]
        assert all(gap >= 0.9 * delay for gap, delay in zip(gaps, expected[:5], strict=True))

    run(scenario)


def test_an_object_that_keeps_failing_keeps_being_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At the defaults (0.5 s doubling to 60 s) the 1025th failure comes after about 17 hours."""
    caplog.set_level(logging.CRITICAL, logger="turnpike.controller.workqueue")

    async def scenario() -> None:
        handler = Handler([failure() for _ in range(1100)])
        queue = WorkQueue(handler, workers=1, base_backoff=0.0, max_backoff=0.0)
        queue.start()
        try:
            queue.add(A)
            await asyncio.wait_for(handler.until(lambda: len(handler.finished) > 1100), 0.5)
        finally:
            await queue.stop()

    run(scenario)


def test_a_returned_delay_schedules_the_next_look_and_none_schedules_nothing() -> None:
    async def scenario() -> None:
        handler = Handler([0.02, 0.02, None])
        queue = WorkQueue(handler, workers=1)
        delays = scheduled_delays(queue)
        queue.start()
        try:
            queue.add(A)
            await handler.until(lambda: len(handler.finished) == 3)
        finally:
            await queue.stop()
        assert delays == pytest.approx([0.02, 0.02], abs=0.003)
        gaps = [later - earlier for earlier, later in pairwise(handler.times)]
        assert all(gap >= 0.018 for gap in gaps)

    run(scenario)


def test_the_earliest_schedule_wins() -> None:
    async def scenario() -> None:
        handler = Handler()
        queue = WorkQueue(handler, workers=2)
        queue.start()
        try:
            queue.add_after(A, 5.0)
            queue.add_after(A, 0.02)  # sooner replaces later
            queue.add_after(B, 0.02)
            queue.add_after(B, 5.0)  # later does not postpone sooner
            await asyncio.wait_for(handler.until(lambda: {A, B} <= set(handler.calls)), 1.0)
        finally:
            await queue.stop()
        assert Counter(handler.calls) == {A: 1, B: 1}

    run(scenario)


def test_forget_cancels_a_pending_schedule() -> None:
    """A deleted object must not be reconciled again by its old resync timer."""

    async def scenario() -> None:
        handler = Handler()
        queue = WorkQueue(handler, workers=1)
        queue.start()
        try:
            queue.add_after(A, 0.01)
            queue.forget(A)
            queue.add_after(MARK, 0.03)  # fires after A's timer would have
            await handler.until(lambda: MARK in handler.calls)
        finally:
            await queue.stop()
        assert handler.calls == [MARK]

    run(scenario)


def test_nothing_runs_after_stop() -> None:
    async def scenario() -> None:
        handler = Handler()
        handler.hold.clear()
        queue = WorkQueue(handler, workers=2)
        queue.start()
        queue.add(A)
        await handler.until(lambda: handler.running[A] == 1)
        queue.add_after(B, 0.01)
        await queue.stop()
        assert handler.cancelled == 1  # the pass in flight was cancelled, not awaited
        queue.add(MARK)  # a late event during shutdown
        await asyncio.sleep(0.05)  # well past B's timer
        assert queue.depth == 1  # MARK waits; B's timer never fired
        assert handler.calls == [A]

    run(scenario)
