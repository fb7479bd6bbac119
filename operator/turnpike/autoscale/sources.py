"""Metric sources: the autoscaler's only I/O.

Each source turns "these ready pods" into one :class:`Observation` and never
raises for a pod or server that misbehaves: a failure becomes a reason string
in ``Observation.failed``, because the policy must see the difference between
"queue is empty" and "we could not tell" (it holds on the latter and never
scales down).

* :class:`PodScrapeSource` reads each pod's Triton ``/metrics`` directly. It
  needs no Prometheus, reacts within one scrape, and its failures are per pod.
* :class:`PrometheusSource` asks a Prometheus server, for clusters that
  already scrape Triton or forbid the operator from reaching pods. It lags by
  Prometheus' own scrape interval (typically 15-30 s), so pair it with a
  panic window at least that long.

Both use sessions with ``trust_env=False``: proxy variables meant for the
operator's egress must not route in-cluster pod traffic through a proxy.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from turnpike.api.constants import METRICS_PORT
from turnpike.autoscale.signal import (
    COMPUTE_INFER,
    PENDING,
    QUEUE_DURATION,
    REQUEST_FAILURE,
    REQUEST_SUCCESS,
    TRTLLM_REQUESTS,
    CounterDelta,
    MetricsParseError,
    Observation,
    PodMetrics,
    counter_delta,
    parse_triton_metrics,
    pod_in_flight,
    queue_wait_ms,
)

Clock = Callable[[], float]
# Triton's exposition is tens of KiB; anything near this is not Triton.
MAX_BODY_BYTES = 8 * 1024 * 1024
# How long a pod this source read stays known after its last reading: a pod
# gone longer than this is gone (pod names carry a random suffix).
SEEN_FOR_S = 3600.0
# Parse bigger bodies off the event loop so kopf's handlers keep running.
_THREAD_PARSE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class PodTarget:
    """A ready pod to read: its name (the key in results) and its IP."""

    name: str
    ip: str
    # Every request its Triton counted is new to the caller (the pod started
    # while the caller was already measuring): its first reading counts from zero
    # instead of being only the baseline of the next one.
    fresh: bool = False


class MetricsSource(Protocol):
    """Where a deployment's queue numbers come from."""

    async def sample(self, pods: Sequence[PodTarget]) -> Observation:
        """Observe ``pods`` now. Never raises for pod or server failures."""
        ...

    async def close(self) -> None: ...


def new_session(*, limit: int = 64) -> aiohttp.ClientSession:
    """A session fit for sources: no proxies from the environment, no cookies.

    Share one across sources to reuse connections; the caller closes it.
    Must be created inside the running event loop.
    """
    return aiohttp.ClientSession(
        trust_env=False,
        connector=aiohttp.TCPConnector(limit=limit),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class _Failed(Exception):
    """A pod or server failed; the message is the reason users see."""


class _SessionHolder:
    def __init__(self, session: aiohttp.ClientSession | None, limit: int) -> None:
        self._session = session
        self._owns_session = session is None
        self._limit = limit

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            self._session = new_session(limit=self._limit)
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()


class PodScrapeSource(_SessionHolder):
    """GET ``http://<podIP>:8002/metrics`` on every ready pod, concurrently.

    ``request_timeout_s`` bounds one pod; ``deadline_s`` bounds the whole
    round, so a fleet with a few black-holed pods still yields a (partial)
    observation on time. Keeps the previous round's counters per pod to turn
    Triton's cumulative queue time into a mean over the interval, so use one
    instance per deployment (rounds on one instance are serialized).
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        port: int = METRICS_PORT,
        path: str = "/metrics",
        request_timeout_s: float = 1.0,
        deadline_s: float = 1.5,
        max_concurrency: int = 32,
        max_body_bytes: int = MAX_BODY_BYTES,
        clock: Clock = time.time,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if request_timeout_s <= 0 or deadline_s <= 0 or max_concurrency < 1:
            raise ValueError("timeouts must be > 0 and max_concurrency >= 1")
        super().__init__(session, max_concurrency)
        self._model = model
        self._port = port
        self._path = path if path.startswith("/") else "/" + path
        self._request_timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._request_timeout_s = request_timeout_s
        self._deadline_s = deadline_s
        self._max_concurrency = max_concurrency
        self._max_body_bytes = max_body_bytes
        self._clock = clock
        self._previous: dict[str, PodMetrics] = {}
        self._previous_t: dict[str, float] = {}
        # Pods this source has read, and when last: see ``fresh``.
        self._seen: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> PodScrapeSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def url(self, pod: PodTarget) -> str:
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        return f"http://{host}:{self._port}{self._path}"

    async def sample(self, pods: Sequence[PodTarget]) -> Observation:
        async with self._lock:
            return await self._sample(pods)

    async def _sample(self, pods: Sequence[PodTarget]) -> Observation:
        started = self._clock()
        targets = list({pod.name: pod for pod in pods}.values())
        session = self._get_session()
        gate = asyncio.Semaphore(self._max_concurrency)
        tasks = {pod.name: asyncio.create_task(self._scrape(session, gate, pod)) for pod in targets}
        try:
            if tasks:
                await asyncio.wait(tasks.values(), timeout=self._deadline_s)
        finally:
            late = [task for task in tasks.values() if not task.done()]
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

        results: dict[str, PodMetrics] = {}
        failed: dict[str, str] = {}
        for name, task in tasks.items():
            if task.cancelled():
                failed[name] = f"no answer within the {_secs(self._deadline_s)} deadline"
                continue
            exc = task.exception()
            if exc is None:
                results[name] = task.result()
            elif isinstance(exc, _Failed):
                failed[name] = str(exc)
            else:  # a bug or an aiohttp surprise: report it, never crash the round
                failed[name] = f"error: {exc!r}"

        wait_ms = queue_wait_ms(self._previous, results)
        in_flight: float | None = 0.0 if results else None
        for name, metrics in results.items():
            previous_t = self._previous_t.get(name)
            busy = pod_in_flight(
                self._previous.get(name),
                metrics,
                started - previous_t if previous_t is not None else None,
            )
            in_flight = None if busy is None or in_flight is None else in_flight + busy
        deltas: dict[str, CounterDelta] = {}
        # A fresh pod counts from zero only the first time this source reads it: one
        # that drops out of the targets (a readiness blip) and returns is a baseline.
        fresh = {pod.name for pod in targets if pod.fresh and pod.name not in self._seen}
        for name in results:
            self._seen[name] = started
        self._seen = {n: t for n, t in self._seen.items() if started - t < SEEN_FOR_S}
        for name, metrics in results.items():
            before = self._previous.get(name)
            if before is None and name in fresh:
                before = PodMetrics()
            delta = counter_delta(before, metrics)
            if delta is not None:
                deltas[name] = delta
        # Keep old counters of pods that failed this round: the next delta
        # then spans two intervals, which is still a correct mean.
        # Also of pods that left the targets for a while (a readiness blip): when
        # they come back, the delta spans the gap, so no request is lost or counted
        # twice. Pods unseen for SEEN_FOR_S are forgotten.
        self._previous = {
            name: results.get(name) or self._previous[name]
            for name in self._seen
            if name in results or name in self._previous
        }
        self._previous_t = {
            name: started if name in results else self._previous_t[name]
            for name in self._previous
            if name in results or name in self._previous_t
        }
        return Observation(
            time=started,
            queue=sum(m.queue for m in results.values()),
            queue_time_ms=wait_ms,
            pods=tuple(pod.name for pod in targets),
            queues={name: m.queue for name, m in results.items()},
            failed=failed,
            in_flight=in_flight,
            deltas=deltas,
        )

    async def _scrape(
        self, session: aiohttp.ClientSession, gate: asyncio.Semaphore, pod: PodTarget
    ) -> PodMetrics:
        try:
            async with (
                gate,
                session.get(
                    self.url(pod), timeout=self._request_timeout, allow_redirects=False
                ) as response,
            ):
                if response.status != 200:
                    raise _Failed(f"HTTP {response.status}")
                body = await _read_limited(response, self._max_body_bytes)
        except TimeoutError as exc:
            raise _Failed(f"timeout after {_secs(self._request_timeout_s)}") from exc
        except aiohttp.ClientConnectorError as exc:
            why = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
            raise _Failed(f"unreachable: {why}") from exc
        except aiohttp.ClientError as exc:
            raise _Failed(f"HTTP error: {type(exc).__name__}: {exc}") from exc
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Failed("garbage: body is not UTF-8") from exc
        try:
            if len(body) > _THREAD_PARSE_BYTES:
                return await asyncio.to_thread(parse_triton_metrics, text, self._model)
            return parse_triton_metrics(text, self._model)
        except MetricsParseError as exc:
            raise _Failed(f"garbage: {exc}") from exc


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")


@dataclass(frozen=True, slots=True)
class PromLabels:
    """Label names your Prometheus attaches to Triton's series.

    Scrape configs differ: the Prometheus Operator's PodMonitor yields
    ``namespace``/``pod``; classic ``kubernetes_sd`` relabelling often yields
    ``kubernetes_namespace``/``kubernetes_pod_name``. ``extra`` adds fixed
    matchers such as ``{"job": "triton"}`` to keep other exporters out.
    """

    namespace: str = "namespace"
    pod: str = "pod"
    model: str = "model"
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (self.namespace, self.pod, self.model, *self.extra):
            if not _LABEL_NAME.match(name):
                raise ValueError(f"{name!r} is not a Prometheus label name")


@dataclass(frozen=True, slots=True)
class PromQueries:
    """The PromQL a :class:`PrometheusSource` sends, kept inspectable."""

    queue: str
    waiting: str
    queue_time: str
    active: str
    computing: str


def build_queries(
    *,
    namespace: str,
    pods: Sequence[str],
    model: str | None = None,
    labels: PromLabels | None = None,
    rate_window: str = "1m",
) -> PromQueries:
    """PromQL for one deployment's pods. With default labels and ``model=m``::

        sum by (pod) (nv_inference_pending_request_count{
            namespace="ns",pod=~"p1|p2",model="m"})
        sum by (pod) (nv_trt_llm_request_metrics{
            namespace="ns",pod=~"p1|p2",request_type="waiting"})
        sum(rate(nv_inference_queue_duration_us{namespace="ns",pod=~"p1|p2",model="m"}[1m]))
          / sum(rate({__name__=~"nv_inference_request_success|nv_inference_request_failure",
                      namespace="ns",pod=~"p1|p2",model="m"}[1m])) / 1000
        sum by (pod) (nv_trt_llm_request_metrics{
            namespace="ns",pod=~"p1|p2",request_type="active"})
        sum by (pod) (rate(nv_inference_compute_infer_duration_us{
            namespace="ns",pod=~"p1|p2",model="m"}[1m])) / 1e6

    Grouping by pod tells which pods Prometheus has no series for (a partial
    observation), which a bare ``sum`` would hide. The TensorRT-LLM query
    skips the model matcher for the reason given in
    :func:`~turnpike.autoscale.signal.parse_triton_metrics`. The queue-time
    query is a mean wait in ms over ``rate_window``, which should span at
    least two of Prometheus' scrape intervals; ``rate`` handles counter
    resets. The last two are the requests in flight per pod, as
    :func:`~turnpike.autoscale.signal.pod_in_flight` reads them from a pod:
    TensorRT-LLM's active requests where it exports them, else compute time
    per second (a batch of 8 computing for 1 s is 8 requests in flight),
    averaged over ``rate_window``.
    """
    labels = labels or PromLabels()
    if not _DURATION.match(rate_window):
        raise ValueError(f"rate_window {rate_window!r} is not a PromQL duration like 1m")
    pod_regex = "|".join(re.escape(pod) for pod in pods)
    matchers = [
        f"{labels.namespace}={_promql_string(namespace)}",
        f"{labels.pod}=~{_promql_string(pod_regex)}",
        *(f"{key}={_promql_string(value)}" for key, value in sorted(labels.extra.items())),
    ]
    scope = ",".join(matchers)
    model_scope = scope + (f",{labels.model}={_promql_string(model)}" if model else "")
    completed = _promql_string(f"{REQUEST_SUCCESS}|{REQUEST_FAILURE}")
    return PromQueries(
        queue=f"sum by ({labels.pod}) ({PENDING}{{{model_scope}}})",
        waiting=f'sum by ({labels.pod}) ({TRTLLM_REQUESTS}{{{scope},request_type="waiting"}})',
        queue_time=(
            f"sum(rate({QUEUE_DURATION}{{{model_scope}}}[{rate_window}]))"
            f" / sum(rate({{__name__=~{completed},{model_scope}}}[{rate_window}])) / 1000"
        ),
        active=f'sum by ({labels.pod}) ({TRTLLM_REQUESTS}{{{scope},request_type="active"}})',
        computing=(
            f"sum by ({labels.pod}) (rate({COMPUTE_INFER}{{{model_scope}}}[{rate_window}])) / 1e6"
        ),
    )


class PrometheusSource(_SessionHolder):
    """Read queue numbers for a deployment's pods from the Prometheus HTTP API.

    Issues the :func:`build_queries` queries concurrently as POSTs to
    ``/api/v1/query`` (a long pod regex would not fit a URL). Pods absent from
    the results are reported failed ("no series"); a Prometheus that errors
    or times out fails every pod, which the policy treats as missing metrics.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        model: str | None = None,
        labels: PromLabels | None = None,
        rate_window: str = "1m",
        timeout_s: float = 2.0,
        queue_time: bool = True,
        headers: Mapping[str, str] | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        clock: Clock = time.time,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        super().__init__(session, 8)
        self._endpoint = url.rstrip("/") + "/api/v1/query"
        self._namespace = namespace
        self._model = model
        self._labels = labels or PromLabels()
        self._rate_window = rate_window
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._timeout_s = timeout_s
        self._want_queue_time = queue_time
        self._headers = dict(headers or {})
        self._max_body_bytes = max_body_bytes
        self._clock = clock
        build_queries(namespace=namespace, pods=[], labels=self._labels, rate_window=rate_window)

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def queries(self, pods: Sequence[PodTarget]) -> PromQueries:
        return build_queries(
            namespace=self._namespace,
            pods=sorted({pod.name for pod in pods}),
            model=self._model,
            labels=self._labels,
            rate_window=self._rate_window,
        )

    async def sample(self, pods: Sequence[PodTarget]) -> Observation:
        started = self._clock()
        names = tuple(sorted({pod.name for pod in pods}))
        if not names:
            return Observation(time=started, queue=0.0)
        queries = self.queries(pods)
        session = self._get_session()
        asked = {
            "queue": queries.queue,
            "waiting": queries.waiting,
            "active": queries.active,
            "computing": queries.computing,
        }
        if self._want_queue_time:
            asked["queue_time"] = queries.queue_time
        try:
            answers = await asyncio.gather(*(self._query(session, q) for q in asked.values()))
        except _Failed as exc:
            failed = dict.fromkeys(names, str(exc))
            return Observation(time=started, queue=0.0, pods=names, failed=failed)
        vectors = {
            name: {pod: v for pod, v in vector.items() if math.isfinite(v) and v >= 0}
            for name, vector in zip(asked, answers, strict=True)
        }

        queues: dict[str, float] = {}
        for vector in (vectors["queue"], vectors["waiting"]):
            for pod, value in vector.items():
                if pod in names:
                    queues[pod] = queues.get(pod, 0.0) + value
        return Observation(
            time=started,
            queue=sum(queues.values()),
            queue_time_ms=vectors.get("queue_time", {}).get(""),
            pods=names,
            queues=queues,
            failed={pod: "no series in Prometheus" for pod in names if pod not in queues},
            in_flight=_in_flight(queues, vectors["active"], vectors["computing"]),
        )

    async def _query(self, session: aiohttp.ClientSession, query: str) -> dict[str, float]:
        form = {"query": query, "timeout": f"{self._timeout_s:g}s"}
        try:
            async with session.post(
                self._endpoint,
                data=form,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                body = await _read_limited(response, self._max_body_bytes)
                status = response.status
                try:
                    if len(body) > _THREAD_PARSE_BYTES:
                        payload = await asyncio.to_thread(_json, body)
                    else:
                        payload = _json(body)
                except ValueError:
                    raise _Failed(f"prometheus: HTTP {status}, not JSON") from None
        except TimeoutError as exc:
            raise _Failed(f"prometheus: timeout after {_secs(self._timeout_s)}") from exc
        except aiohttp.ClientConnectorError as exc:
            why = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
            raise _Failed(f"prometheus unreachable: {why}") from exc
        except aiohttp.ClientError as exc:
            raise _Failed(f"prometheus: {type(exc).__name__}: {exc}") from exc
        return _vector(payload, status, self._labels.pod)


def _in_flight(
    answered: Mapping[str, float], active: Mapping[str, float], computing: Mapping[str, float]
) -> float | None:
    """Requests executing over the pods that answered; None when any of them cannot tell."""
    total = 0.0
    for pod in answered:
        busy = active.get(pod, computing.get(pod))
        if busy is None:
            return None
        total += busy
    return total if answered else None


def _json(body: bytes) -> Any:
    return json.loads(body)


def _vector(payload: Any, status: int, pod_label: str) -> dict[str, float]:
    """``{pod: value}`` from an instant-vector answer; ``""`` keys an unlabelled sum."""
    if not isinstance(payload, dict):
        raise _Failed(f"prometheus: HTTP {status}, unexpected answer")
    if payload.get("status") != "success":
        error = str(payload.get("error") or "no error given")[:200]
        raise _Failed(f"prometheus: HTTP {status}, {payload.get('errorType', 'error')}: {error}")
    data = payload.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise _Failed("prometheus: answer is not an instant vector")
    out: dict[str, float] = {}
    try:
        for item in data.get("result") or []:
            key = str(item.get("metric", {}).get(pod_label, ""))
            out[key] = out.get(key, 0.0) + float(item["value"][1])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise _Failed(f"prometheus: malformed vector: {exc!r}") from exc
    return out


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    length = response.content_length
    if length is not None and length > limit:
        raise _Failed(f"body of {length} bytes exceeds {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _Failed(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _promql_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _secs(seconds: float) -> str:
    return f"{seconds:g}s"
