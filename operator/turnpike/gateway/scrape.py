"""Triton's queue depth per ready pod, for routing.

Routing only needs a rough, recent number per pod, so this reads the pending
gauge from each pod's metrics port on an interval, skips pods that fail
(their reading ages out and routing falls back to the gateway's own count),
and never blocks a request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import aiohttp

from turnpike.autoscale.signal import MetricsParseError, parse_triton_metrics
from turnpike.gateway.endpoints import Endpoint
from turnpike.gateway.routing import QueueReading

MAX_BODY_BYTES = 4 * 1024 * 1024
Targets = Callable[[], Iterable[tuple[str | None, Endpoint]]]
Record = Callable[[str, QueueReading], None]


async def read_queue(
    session: aiohttp.ClientSession, endpoint: Endpoint, model: str | None, timeout_s: float
) -> float | None:
    url = endpoint.metrics_url()
    if url is None:
        return None
    try:
        async with session.get(
            url,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
            headers={"Accept-Encoding": "identity"},  # the session does not decompress
        ) as response:
            if response.status != 200:
                return None
            body = await response.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return None
        return parse_triton_metrics(body.decode("utf-8", "replace"), model).queue
    except (TimeoutError, aiohttp.ClientError, MetricsParseError):
        return None


async def scrape_forever(
    session: aiohttp.ClientSession,
    targets: Targets,
    record: Record,
    *,
    interval_s: float = 1.0,
    timeout_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Every ``interval_s``, read every target once (concurrently) and record what answered."""
    while True:
        started = clock()
        batch = list(targets())
        readings = await asyncio.gather(
            *(read_queue(session, endpoint, model, timeout_s) for model, endpoint in batch)
        )
        for (_, endpoint), depth in zip(batch, readings, strict=True):
            if depth is not None:
                record(endpoint.key, QueueReading(depth, started))
        await asyncio.sleep(max(0.0, interval_s - (clock() - started)))
