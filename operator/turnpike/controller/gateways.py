"""What the gateways hold for each deployment: the operator's side of scale from zero.

At zero replicas no Triton reports a queue; the requests waiting for the
deployment are held in the gateways. This polls every gateway pod's load
document about once a second, sums the held requests per ModelDeployment, and
calls ``on_held`` the moment a deployment goes from nothing held to something
held, so its reconcile runs now instead of at the next periodic tick.

The autoscaler asks :meth:`GatewayLoads.load`: None unless the last poll
reached every gateway (or found held requests, which is enough to wake a
deployment): scaling to zero with a gateway unheard from could strand the
requests it holds.

The gateways also count, per deployment with an SLO on request latency, the
requests they relayed and those answered within the threshold: cumulative per
gateway process (``instance``), so a missed poll loses nothing and a restarted
gateway is recognised. :meth:`GatewayLoads.take_slo` hands the SLO meter what
was counted since it last asked (method ``gateway``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from turnpike.autoscale.policy import GatewayLoad
from turnpike.gateway.load import PATH, Reading, SLOReading, read
from turnpike.kube import KubeAPI
from turnpike.kube.resources import POD
from turnpike.slo.window import Counts

log = logging.getLogger(__name__)

Key = tuple[str, str]
POLL_SECONDS = 1.0
TIMEOUT_SECONDS = 1.0
# A poll older than this is no answer at all (the loop stalled or stopped).
STALE_SECONDS = 10.0
# status.slo.method when the gateways count the SLO's requests.
SLO_METHOD = "gateway"
# A gateway process not heard from for this long is forgotten (its pod is gone).
FORGET_SECONDS = 600.0


def ready_urls(pods: Sequence[dict[str, Any]], port: int) -> list[str]:
    """The load URL of each ready, running gateway pod with an address."""
    urls = []
    for pod in pods:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if ip and ready and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            host = f"[{ip}]" if ":" in str(ip) else ip
            urls.append(f"http://{host}:{port}{PATH}")
    return sorted(urls)


class GatewayLoads:
    def __init__(
        self,
        kube: KubeAPI,
        *,
        on_held: Callable[[Key], None],
        urls: Sequence[str] = (),
        selector: str | None = None,
        namespace: str | None = None,
        port: int = 8080,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.on_held = on_held
        self.urls = tuple(urls)
        self.selector = selector
        self.namespace = namespace
        self.port = port
        self.clock = clock
        self._held: dict[Key, int] = {}
        self._complete_at: float | None = None  # last poll that reached every gateway
        self._polled_at: float | None = None
        self._failing = False
        # SLO counts: the last cumulative reading per gateway process, what was
        # counted since the meter last asked, and which deployments are measured.
        self._seen: dict[str, tuple[float, dict[Key, SLOReading]]] = {}
        self._pending: dict[Key, tuple[float, Counts]] = {}
        self._measured: set[Key] = set()
        self._polls = 0

    @property
    def configured(self) -> bool:
        return bool(self.urls or self.selector)

    def load(self, key: Key) -> GatewayLoad | None:
        """What the gateways hold for ``key``; None when that is not known."""
        now = self.clock()
        held = self._held.get(key, 0)
        if held > 0 and self._polled_at is not None and now - self._polled_at < STALE_SECONDS:
            return GatewayLoad(held)
        if self._complete_at is None or now - self._complete_at >= STALE_SECONDS:
            return None
        return GatewayLoad(held)

    def take_slo(self, key: Key, threshold_ms: float) -> Counts | None:
        """Requests counted by the gateways for ``key`` since the last call; None when
        no gateway measures it (the meter then estimates from Triton)."""
        if key not in self._measured:
            return None
        measured, counts = self._pending.pop(key, (threshold_ms, Counts()))
        return counts if measured == threshold_ms else Counts()

    async def run(self, stop: asyncio.Event) -> None:
        if not self.configured:
            return
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            while not stop.is_set():
                try:
                    await self.poll(session)
                except Exception as exc:  # any: a dead poller would leave deployments at zero
                    self._complete_at = None
                    if not self._failing:
                        log.warning("polling the gateways failed: %r", exc)
                        self._failing = True
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_SECONDS)

    async def poll(self, session: aiohttp.ClientSession) -> None:
        urls = list(self.urls)
        if self.selector:
            pods = await self.kube.list(POD, self.namespace, label_selector=self.selector)
            urls += ready_urls(pods, self.port)
        answers = await asyncio.gather(*(self._fetch(session, url) for url in urls))
        now = self.clock()
        total: dict[Key, int] = {}
        for url, answer in zip(urls, answers, strict=True):
            if answer is None:
                continue
            for key, held in answer.held.items():
                total[key] = total.get(key, 0) + held
            self._count_slo(answer.instance or url, answer.slo, now)
        self._polls += 1
        self._seen = {k: v for k, v in self._seen.items() if now - v[0] < FORGET_SECONDS}
        complete = bool(urls) and all(a is not None for a in answers)
        self._polled_at = now
        self._complete_at = now if complete else self._complete_at
        if complete and self._failing:
            log.info("every gateway answers again (%d)", len(urls))
        self._failing = not complete
        woken = [k for k, held in total.items() if held > 0 and self._held.get(k, 0) == 0]
        self._held = total
        for key in woken:
            self.on_held(key)

    def _count_slo(self, instance: str, readings: Mapping[Key, SLOReading], now: float) -> None:
        """Add what one gateway process counted since its previous reading.

        A process seen for the first time counts in full, unless this is the
        operator's first poll (what it counted before then is not this
        operator's to add: the meter started afresh or restored its window)."""
        _, before = self._seen.get(instance, (now, None))
        for key, reading in readings.items():
            self._measured.add(key)
            last = before.get(key) if before is not None else None
            if before is None and self._polls == 0:
                continue
            if last is None or last.threshold_ms != reading.threshold_ms:
                added = Counts(reading.requests, reading.good, reading.good)
            elif reading.requests < last.requests or reading.good < last.good:
                added = Counts(reading.requests, reading.good, reading.good)  # restarted
            else:
                requests, good = reading.requests - last.requests, reading.good - last.good
                added = Counts(requests, good, good)
            measured, pending = self._pending.get(key, (reading.threshold_ms, Counts()))
            if measured != reading.threshold_ms:
                pending = Counts()
            self._pending[key] = (reading.threshold_ms, pending + added)
        self._seen[instance] = (now, dict(readings))

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> Reading | None:
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                return read(json.loads(await response.read()))
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            if not self._failing:
                log.warning("gateway %s gave no load document: %r", url, exc)
            return None
