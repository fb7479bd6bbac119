"""A bounded closed-loop load generator for Triton, on ``tritonclient.http.aio``.

A schedule is a list of phases ``(duration_s, concurrency)``. During a phase,
``concurrency`` workers each keep one request in flight (send, await the
answer, send the next), spread round-robin over the targets. The run stops by
itself: at the end of the schedule, after ``max_requests`` requests in all,
at ``max_total_s`` (default: the schedule's length plus one request timeout),
or when ``stop`` is set. A request still in flight when its phase ends is
allowed to finish (bounded by ``request_timeout_s``) and counts in the phase
that sent it; one cut off by ``max_total_s`` counts as ``cancelled``.

    from hack import loadgen

    result = loadgen.run(["127.0.0.5:8000"], [(5, 8), (3, 0)])
    for phase in result.phases:
        print(phase.concurrency, phase.sent, phase.ok, phase.p50_ms, phase.p99_ms)

    # inside an event loop, with an early stop:
    stop = asyncio.Event()
    task = asyncio.create_task(loadgen.run_load(targets, [(30, 8)], stop=stop))
    ...; stop.set(); result = await task

    # from synchronous code, in a background thread:
    with loadgen.background(targets, [(30, 8)]) as load:
        ...                      # load.sent(), load.stop()
    result = load.result()

CLI::

    python hack/loadgen.py 127.0.0.5:8000 --phase 5:8 --phase 3:0 --max-requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MODEL = "sleepy"
DEFAULT_MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 512


@dataclass(frozen=True, slots=True)
class Phase:
    duration_s: float
    concurrency: int

    def __post_init__(self) -> None:
        if not (0 <= self.duration_s < math.inf):
            raise ValueError(f"phase duration {self.duration_s} must be finite and >= 0")
        if not 0 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency {self.concurrency} must be in 0..{MAX_CONCURRENCY}")


def errno_of(exc: BaseException) -> str:
    """The OS error's name under a client error (aiohttp keeps only its text)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        os_error = getattr(seen, "os_error", None) or seen
        code = os_error.errno if isinstance(os_error, OSError) else None
        if code is not None and code in errno.errorcode:
            return f" [{errno.errorcode[code]}]"
        seen = seen.__cause__ or seen.__context__
    return ""


@dataclass(slots=True)
class PhaseStats:
    index: int
    duration_s: float
    concurrency: int
    sent: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0  # in flight when max_total_s ran out: neither ok nor failed
    elapsed_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    errors: dict[str, int] = field(default_factory=dict)  # first error texts, counted
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    # When each failure happened, seconds since the run began (to line up with events).
    failed_at_s: list[float] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        """Successful requests per second over the phase's wall time."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        del data["latencies_ms"], data["failed_at_s"]
        data["throughput"] = round(self.throughput, 2)
        return data


@dataclass(frozen=True, slots=True)
class LoadResult:
    phases: tuple[PhaseStats, ...]
    elapsed_s: float
    stopped_by: str  # "schedule", "max_requests", "max_total_s" or "stop"

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.phases)

    @property
    def ok(self) -> int:
        return sum(p.ok for p in self.phases)

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.phases)

    def summary(self) -> dict[str, object]:
        return {
            "elapsed_s": round(self.elapsed_s, 3),
            "stopped_by": self.stopped_by,
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "phases": [p.summary() for p in self.phases],
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile, ``q`` in [0, 100]; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _phases(schedule: Sequence[Phase | tuple[float, int]]) -> list[Phase]:
    phases = [p if isinstance(p, Phase) else Phase(float(p[0]), int(p[1])) for p in schedule]
    if not phases:
        raise ValueError("the schedule has no phases")
    return phases


class _Budget:
    """Shared request budget and stop reason across workers (one event loop)."""

    def __init__(self, max_requests: int, stop: asyncio.Event | None) -> None:
        self.left = max_requests
        self.stop = stop
        self.reason: str | None = None
        self.sent = 0

    def take(self) -> bool:
        if self.reason is not None:
            return False
        if self.stop is not None and self.stop.is_set():
            self.reason = "stop"
            return False
        if self.left <= 0:
            self.reason = "max_requests"
            return False
        self.left -= 1
        self.sent += 1
        return True


async def run_load(
    targets: Sequence[str] | Callable[[], Sequence[str]],
    schedule: Sequence[Phase | tuple[float, int]],
    *,
    model: str = MODEL,
    input_name: str = "INPUT0",
    output_name: str = "OUTPUT0",
    size: int = 4,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    max_total_s: float | None = None,
    request_timeout_s: float = 10.0,
    keepalive: bool = True,
    stop: asyncio.Event | None = None,
    progress: list[PhaseStats] | None = None,
) -> LoadResult:
    """Run ``schedule`` against ``targets`` (``host:port`` of Triton's HTTP endpoint).

    ``progress``, if given, is filled with each phase's live PhaseStats as the
    phase starts, for callers that watch a run in flight.

    ``keepalive=False`` sends every request on a new connection
    (``Connection: close``). Use it when the target is a Service's ClusterIP:
    kube-proxy balances connections, not requests, so a keep-alive client stays
    on the pods that existed when it connected, and each of its connections
    breaks once when that pod drains (measured on the real node: one failed
    request per connection during a rollout).
    """
    import numpy as np
    import tritonclient.http.aio as aioclient

    # A callable gives the targets of the moment (pods come and go while a
    # fleet scales); a plain list is fixed for the run.
    current_targets = targets if callable(targets) else (lambda: targets)
    if not current_targets():
        raise ValueError("no targets")
    if max_requests < 0 or request_timeout_s <= 0 or size < 1:
        raise ValueError("max_requests >= 0, request_timeout_s > 0 and size >= 1 required")
    phases = _phases(schedule)
    total = sum(p.duration_s for p in phases)
    limit_s = max_total_s if max_total_s is not None else total + request_timeout_s + 1.0
    began = time.monotonic()
    hard_deadline = began + limit_s
    budget = _Budget(max_requests, stop)
    peak = max(p.concurrency for p in phases)
    # One client per target, made on first use; each owns a pool big enough for the peak.
    clients: dict[str, Any] = {}

    def client_for(target: str) -> Any:
        if target not in clients:
            clients[target] = aioclient.InferenceServerClient(
                url=target, conn_limit=max(peak, 1), conn_timeout=request_timeout_s
            )
        return clients[target]

    data = np.ones(size, dtype=np.float32)
    headers = None if keepalive else {"Connection": "close"}
    next_target = 0
    stats_all: list[PhaseStats] = []

    async def one_request(stats: PhaseStats) -> None:
        nonlocal next_target
        live = current_targets()
        if not live:
            stats.sent += 1
            stats.failed += 1
            stats.errors["no targets"] = stats.errors.get("no targets", 0) + 1
            await asyncio.sleep(0.1)
            return
        client = client_for(live[next_target % len(live)])
        next_target += 1
        tensor = aioclient.InferInput(input_name, [size], "FP32")
        tensor.set_data_from_numpy(data)
        outputs = [aioclient.InferRequestedOutput(output_name)]
        stats.sent += 1
        start = time.monotonic()
        try:
            await asyncio.wait_for(
                client.infer(model, inputs=[tensor], outputs=outputs, headers=headers),
                timeout=request_timeout_s,
            )
        except asyncio.CancelledError:
            stats.cancelled += 1
            raise
        except Exception as exc:  # every failure counts; the text says which
            stats.failed += 1
            stats.failed_at_s.append(round(time.monotonic() - began, 3))
            text = f"{type(exc).__name__}: {exc}{errno_of(exc)}"[:200]
            if text in stats.errors or len(stats.errors) < 10:
                stats.errors[text] = stats.errors.get(text, 0) + 1
        else:
            stats.ok += 1
            stats.latencies_ms.append((time.monotonic() - start) * 1000.0)

    async def worker(stats: PhaseStats, phase_end: float) -> None:
        while time.monotonic() < min(phase_end, hard_deadline) and budget.take():
            await one_request(stats)

    async def wait_stop(until: float) -> None:
        """Sleep until ``until``, waking early when ``stop`` is set."""
        remaining = until - time.monotonic()
        if remaining <= 0:
            return
        if stop is None:
            await asyncio.sleep(remaining)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=remaining)

    try:
        for index, phase in enumerate(phases):
            if budget.reason is not None or time.monotonic() >= hard_deadline:
                break
            stats = PhaseStats(
                index=index, duration_s=phase.duration_s, concurrency=phase.concurrency
            )
            stats_all.append(stats)
            if progress is not None:
                progress.append(stats)
            phase_start = time.monotonic()
            phase_end = min(phase_start + phase.duration_s, hard_deadline)
            if phase.concurrency == 0:
                await wait_stop(phase_end)
                if stop is not None and stop.is_set():
                    budget.reason = "stop"
            else:
                workers = [
                    asyncio.create_task(worker(stats, phase_end)) for _ in range(phase.concurrency)
                ]
                # Workers end at phase_end (after their last request); a stop
                # request makes them end after their current one.
                grace = max(0.0, hard_deadline - time.monotonic())
                _done, pending = await asyncio.wait(workers, timeout=grace)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            stats.elapsed_s = time.monotonic() - phase_start
            _finish(stats)
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()), return_exceptions=True)
        for stats in stats_all:
            _finish(stats)

    if budget.reason is None:
        budget.reason = "max_total_s" if time.monotonic() >= hard_deadline else "schedule"
    return LoadResult(
        phases=tuple(stats_all), elapsed_s=time.monotonic() - began, stopped_by=budget.reason
    )


def _finish(stats: PhaseStats) -> None:
    stats.p50_ms = percentile(stats.latencies_ms, 50)
    stats.p99_ms = percentile(stats.latencies_ms, 99)
    stats.max_ms = max(stats.latencies_ms) if stats.latencies_ms else None


def run(
    targets: Sequence[str] | Callable[[], Sequence[str]],
    schedule: Sequence[Phase | tuple[float, int]],
    **kwargs: object,
) -> LoadResult:
    """Synchronous :func:`run_load` (its own event loop)."""
    return asyncio.run(run_load(targets, schedule, **kwargs))  # type: ignore[arg-type]


class Background:
    """A :func:`run_load` in a daemon thread with its own event loop."""

    def __init__(
        self,
        targets: Sequence[str] | Callable[[], Sequence[str]],
        schedule: Sequence[Phase | tuple[float, int]],
        **kwargs: object,
    ) -> None:
        self._targets = targets if callable(targets) else list(targets)
        self._schedule = _phases(schedule)
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self.progress: list[PhaseStats] = []
        self._thread = threading.Thread(target=self._main, name="loadgen", daemon=True)

    def _main(self) -> None:
        async def body() -> LoadResult:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._started.set()
            return await run_load(
                self._targets,
                self._schedule,
                stop=self._stop,
                progress=self.progress,
                **self._kwargs,  # type: ignore[arg-type]
            )

        try:
            self._result = asyncio.run(body())
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()

    def start(self) -> Background:
        self._thread.start()
        if not self._started.wait(timeout=30):
            raise RuntimeError("load generator thread did not start")
        return self

    def sent(self) -> int:
        """Requests sent so far (a live, unsynchronised read)."""
        return sum(p.sent for p in list(self.progress))

    def stop(self) -> None:
        """Ask the run to end after the requests in flight; returns at once."""
        loop, event = self._loop, self._stop
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def join(self, timeout_s: float | None = None) -> LoadResult:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("load generator still running")
        return self.result()

    def result(self) -> LoadResult:
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise RuntimeError("load generator has not finished")
        return self._result


@contextlib.contextmanager
def background(
    targets: Sequence[str] | Callable[[], Sequence[str]],
    schedule: Sequence[Phase | tuple[float, int]],
    *,
    join_timeout_s: float = 60.0,
    **kwargs: object,
) -> Iterator[Background]:
    """Run load in a thread for the ``with`` body; stopped and joined on exit."""
    load = Background(targets, schedule, **kwargs).start()
    try:
        yield load
    finally:
        load.stop()
        load.join(join_timeout_s)


def _parse_phase(text: str) -> Phase:
    try:
        duration, concurrency = text.split(":")
        return Phase(float(duration), int(concurrency))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"phase {text!r} is not DURATION_S:CONCURRENCY ({exc})"
        ) from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", help="host:port of Triton HTTP endpoints")
    parser.add_argument(
        "--phase",
        type=_parse_phase,
        action="append",
        required=True,
        help="DURATION_S:CONCURRENCY, repeatable, run in order",
    )
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--size", type=int, default=4, help="INPUT0 elements per request")
    parser.add_argument("--max-requests", type=int, default=DEFAULT_MAX_REQUESTS)
    parser.add_argument("--max-total-s", type=float, default=None)
    parser.add_argument("--request-timeout-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    result = run(
        args.targets,
        args.phase,
        model=args.model,
        size=args.size,
        max_requests=args.max_requests,
        max_total_s=args.max_total_s,
        request_timeout_s=args.request_timeout_s,
    )
    print(json.dumps(result.summary(), indent=2))
    return 0 if result.ok > 0 and result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
