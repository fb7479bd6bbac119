"""Turn Triton's Prometheus exposition into the numbers the autoscaler scales on.

Pure code: text in, numbers out. Everything a scrape can get wrong (an HTML
error page, a truncated body, NaN, the wrong port) surfaces here as one
exception type, so the I/O edge can mark that pod failed instead of feeding
nonsense to the policy.

Two signals come out of one exposition:

* queue depth, a gauge: requests Triton has accepted but not started
  (``nv_inference_pending_request_count``) plus requests the TensorRT-LLM
  executor holds in its own queue (``nv_trt_llm_request_metrics`` with
  ``request_type="waiting"``). In-flight batching hands requests to the
  executor at once, so for TensorRT-LLM the Triton-side count stays near zero
  and the real backlog is the executor's.
* queue time, from counters: mean wait in the scheduler queue over an
  interval, computed from two scrapes, because Triton only exports cumulative
  totals.

A third, optional signal guards scale-down: requests in flight (executing,
not waiting). TensorRT-LLM reports it as a gauge
(``nv_trt_llm_request_metrics{request_type="active"}``); for every other
backend it is the rate of ``nv_inference_compute_infer_duration_us``:
seconds of compute per second, i.e. the mean number of requests executing
over the interval (Little's law), computed from two scrapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

PENDING = "nv_inference_pending_request_count"
TRTLLM_REQUESTS = "nv_trt_llm_request_metrics"
QUEUE_DURATION = "nv_inference_queue_duration_us"
REQUEST_SUCCESS = "nv_inference_request_success"
REQUEST_FAILURE = "nv_inference_request_failure"
COMPUTE_INFER = "nv_inference_compute_infer_duration_us"
REQUEST_DURATION = "nv_inference_request_duration_us"

# Per-model families that prove a model is loaded (Triton emits them for every
# loaded model version, zero-valued until traffic arrives).
_PER_MODEL = frozenset({PENDING, QUEUE_DURATION, REQUEST_SUCCESS, REQUEST_FAILURE})
# Summed per model like _PER_MODEL, but not required to prove the model loaded.
_PER_MODEL_OPTIONAL = frozenset({REQUEST_DURATION})

# Bounds on the parser's work. Triton's exposition is tens of KiB and a few
# hundred lines (a thousand with many models and GPUs); the text parser costs
# ~20 µs a line, so these keep one parse under ~0.3 s whatever a pod sends. A
# parse that runs in a thread cannot be cancelled when the scrape's deadline
# passes, so its cost must be bounded before it starts.
MAX_EXPOSITION_CHARS = 1024 * 1024
MAX_EXPOSITION_LINES = 10_000
# The largest usable value of a sample or a per-pod total: floats lose integer
# precision above 2**53 (285 years of queue time in microseconds), and sums of
# such values can no longer overflow to infinity.
MAX_SAMPLE_VALUE = float(2**53)


class MetricsParseError(ValueError):
    """The body is not a usable Triton metrics exposition."""


@dataclass(frozen=True, slots=True)
class PodMetrics:
    """One pod's scrape, reduced to what the autoscaler reads."""

    pending: float = 0.0
    trtllm_waiting: float = 0.0
    queue_duration_us: float = 0.0
    requests: float = 0.0
    # Successful requests alone, and their cumulative whole-request time (the
    # SLO's requestLatency): Triton adds request time for successes only.
    success: float = 0.0
    request_duration_us: float = 0.0
    # Cumulative compute time over every model of the pod (None: not exported).
    compute_infer_us: float | None = None
    # TensorRT-LLM requests executing (None: no TensorRT-LLM executor).
    trtllm_active: float | None = None

    @property
    def queue(self) -> float:
        return self.pending + self.trtllm_waiting


def parse_triton_metrics(text: str, model: str | None = None) -> PodMetrics:
    """Reduce a Triton ``/metrics`` body to a :class:`PodMetrics`.

    ``model`` filters the ``nv_inference_*`` families by their ``model`` label
    (all versions summed); ``None`` sums every model. TensorRT-LLM waiting
    requests are summed over every model regardless: the deployment's named
    model is usually an ensemble whose ``tensorrt_llm`` step owns the executor
    queue, and a pod serves one deployment, so filtering them would hide
    exactly the backlog that matters.

    Raises MetricsParseError when the text does not parse, holds no Triton
    (``nv_``) metrics at all, lacks the named model, reports a non-finite,
    negative or huge value in a family the autoscaler uses, or is larger than
    any Triton exposition (see MAX_EXPOSITION_CHARS), which is refused before
    any parsing so that the work per body stays bounded.
    """
    if len(text) > MAX_EXPOSITION_CHARS:
        raise MetricsParseError(
            f"body of {len(text)} characters is larger than any Triton exposition "
            f"({MAX_EXPOSITION_CHARS})"
        )
    if text.count("\n") > MAX_EXPOSITION_LINES:
        raise MetricsParseError(
            f"body of more than {MAX_EXPOSITION_LINES} lines is not a Triton exposition"
        )
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser raises assorted types on bad input
        raise MetricsParseError(f"not Prometheus text exposition: {_short(exc)}") from exc

    sums = dict.fromkeys(
        (PENDING, QUEUE_DURATION, REQUEST_SUCCESS, REQUEST_FAILURE, REQUEST_DURATION), 0.0
    )
    waiting = 0.0
    active: float | None = None
    compute: float | None = None
    seen_triton = False
    seen_model = model is None
    for family in families:
        for sample in family.samples:
            # The parser renames counter samples to NAME_total; Triton's names lack it.
            name = sample.name.removesuffix("_total")
            if name.startswith("nv_"):
                seen_triton = True
            if name in _PER_MODEL:
                if model is not None and sample.labels.get("model") != model:
                    continue
                seen_model = True
                sums[name] += _checked(name, sample.value)
            elif name in _PER_MODEL_OPTIONAL:
                if model is not None and sample.labels.get("model") != model:
                    continue
                sums[name] += _checked(name, sample.value)
            elif name == TRTLLM_REQUESTS and sample.labels.get("request_type") == "waiting":
                waiting += _checked(name, sample.value)
            elif name == TRTLLM_REQUESTS and sample.labels.get("request_type") == "active":
                active = (active or 0.0) + _checked(name, sample.value)
            elif name == COMPUTE_INFER:
                # Every model: an ensemble's steps all compute for the deployment.
                compute = (compute or 0.0) + _checked(name, sample.value)

    if not seen_triton:
        raise MetricsParseError("no Triton (nv_*) metrics in the body")
    if not seen_model:
        raise MetricsParseError(f"no metrics for model {model!r}: not loaded on this pod?")
    for name, total in [*sums.items(), (TRTLLM_REQUESTS, waiting + (active or 0.0))]:
        if total > MAX_SAMPLE_VALUE:
            raise MetricsParseError(f"{name} sums to an unusable {total:.3g}")
    if compute is not None and compute > MAX_SAMPLE_VALUE:
        raise MetricsParseError(f"{COMPUTE_INFER} sums to an unusable {compute:.3g}")
    return PodMetrics(
        pending=sums[PENDING],
        trtllm_waiting=waiting,
        queue_duration_us=sums[QUEUE_DURATION],
        requests=sums[REQUEST_SUCCESS] + sums[REQUEST_FAILURE],
        success=sums[REQUEST_SUCCESS],
        request_duration_us=sums[REQUEST_DURATION],
        compute_infer_us=compute,
        trtllm_active=active,
    )


def queue_wait_ms(
    previous: Mapping[str, PodMetrics], current: Mapping[str, PodMetrics]
) -> float | None:
    """Mean queue wait (ms) of the requests completed between two scrapes.

    Pods only in ``current`` are skipped: without a previous reading the
    interval their counters cover is unknown. A counter that went down means
    Triton restarted; as Prometheus' ``rate()`` does, the new value is then the
    increase since the restart. Failures count as requests because Triton adds
    their queue time too. None when no request completed: the mean is
    undefined, not zero.
    """
    waited_us = 0.0
    completed = 0.0
    for pod, cur in current.items():
        prev = previous.get(pod)
        if prev is None:
            continue
        if cur.requests < prev.requests or cur.queue_duration_us < prev.queue_duration_us:
            prev = PodMetrics()
        waited_us += cur.queue_duration_us - prev.queue_duration_us
        completed += cur.requests - prev.requests
    if completed <= 0:
        return None
    return waited_us / completed / 1000.0


@dataclass(frozen=True, slots=True)
class CounterDelta:
    """What one pod's cumulative counters gained between two scrapes."""

    success: float
    failure: float
    queue_duration_us: float
    request_duration_us: float

    @property
    def completed(self) -> float:
        return self.success + self.failure


def counter_delta(previous: PodMetrics | None, current: PodMetrics) -> CounterDelta | None:
    """The increase of one pod's request counters since ``previous``.

    None without a previous reading (the interval is unknown). Any counter
    that went down means Triton restarted: as Prometheus' ``rate()`` does, the
    current values are then the increase since the restart.
    """
    if previous is None:
        return None
    if (
        current.requests < previous.requests
        or current.success < previous.success
        or current.queue_duration_us < previous.queue_duration_us
        or current.request_duration_us < previous.request_duration_us
    ):
        previous = PodMetrics()
    return CounterDelta(
        success=current.success - previous.success,
        failure=(current.requests - current.success) - (previous.requests - previous.success),
        queue_duration_us=current.queue_duration_us - previous.queue_duration_us,
        request_duration_us=current.request_duration_us - previous.request_duration_us,
    )


def pod_in_flight(
    previous: PodMetrics | None, current: PodMetrics, interval_s: float | None
) -> float | None:
    """Requests executing on one pod: TensorRT-LLM's gauge, else a compute rate.

    The rate is the increase of ``nv_inference_compute_infer_duration_us``
    over ``interval_s`` (seconds between the two scrapes), in requests: a
    batch of 8 computing for 1 s adds 8 s. A counter that went down means
    Triton restarted and the new value is the increase since. None when the
    pod exports neither, or has no earlier reading to take a rate from.
    """
    if current.trtllm_active is not None:
        return current.trtllm_active
    if current.compute_infer_us is None or previous is None or previous.compute_infer_us is None:
        return None
    if interval_s is None or interval_s <= 0:
        return None
    delta = current.compute_infer_us - previous.compute_infer_us
    if delta < 0:
        delta = current.compute_infer_us
    return delta / 1e6 / interval_s


@dataclass(frozen=True, slots=True)
class Observation:
    """One sampling round over a deployment's ready pods.

    ``queue`` and ``queue_time_ms`` cover only the pods that answered; the
    policy reads ``partial`` to know that the queue is a lower bound.
    ``in_flight`` is the requests executing over the pods that answered, or
    None when any of them could not tell (see :func:`pod_in_flight`).
    """

    time: float
    queue: float
    queue_time_ms: float | None = None
    pods: tuple[str, ...] = ()
    queues: Mapping[str, float] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    in_flight: float | None = None
    # Per pod that answered twice in a row: its counters' increase over the interval.
    deltas: Mapping[str, CounterDelta] = field(default_factory=dict)

    @property
    def pods_total(self) -> int:
        return len(self.pods)

    @property
    def pods_ok(self) -> int:
        return len(self.queues)

    @property
    def usable(self) -> bool:
        """At least one pod answered, so the numbers mean something."""
        return self.pods_ok > 0

    @property
    def partial(self) -> bool:
        return self.usable and bool(self.failed)

    def failure_summary(self, limit: int = 3) -> str:
        """A short, stable text for conditions and events."""
        items = sorted(self.failed.items())
        text = ", ".join(f"{pod}: {why}" for pod, why in items[:limit])
        if len(items) > limit:
            text += f", and {len(items) - limit} more"
        return text


def _checked(name: str, value: float) -> float:
    # The parser returns ints for integer text, which may exceed any float.
    try:
        number = float(value)
    except OverflowError:
        raise MetricsParseError(f"{name} has unusable value (beyond any float)") from None
    if not math.isfinite(number) or number < 0 or number > MAX_SAMPLE_VALUE:
        raise MetricsParseError(f"{name} has unusable value {number!r}")
    return number


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
