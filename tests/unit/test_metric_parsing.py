"""Parsing Triton's Prometheus exposition into autoscaler signals.

The fixtures are written by hand after Triton 2.5x (25.xx containers) output:
per-model families with model/version labels, failure reasons, GPU and CPU
families that carry no model label, and the TensorRT-LLM backend's
nv_trt_llm_* families.
"""

# Exposition lines are kept verbatim in Triton's shape, however long.
# ruff: noqa: E501

from __future__ import annotations

import time

import pytest

from turnpike.autoscale.signal import (
    MAX_EXPOSITION_LINES,
    MetricsParseError,
    Observation,
    PodMetrics,
    parse_triton_metrics,
    pod_in_flight,
    queue_wait_ms,
)

# A Python-backend repository with two models, one of them with two versions.
TRITON_TWO_MODELS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="classifier",version="1"} 1200
nv_inference_request_success{model="classifier",version="2"} 300
nv_inference_request_success{model="embedder",version="1"} 50
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="classifier",reason="REJECTED",version="1"} 3
nv_inference_request_failure{model="classifier",reason="CANCELED",version="1"} 0
nv_inference_request_failure{model="classifier",reason="BACKEND",version="1"} 2
nv_inference_request_failure{model="classifier",reason="OTHER",version="1"} 0
nv_inference_request_failure{model="classifier",reason="REJECTED",version="2"} 0
nv_inference_request_failure{model="embedder",reason="BACKEND",version="1"} 1
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="classifier",version="1"} 4800
nv_inference_count{model="classifier",version="2"} 1200
nv_inference_count{model="embedder",version="1"} 50
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="classifier",version="1"} 400
nv_inference_exec_count{model="classifier",version="2"} 100
nv_inference_exec_count{model="embedder",version="1"} 50
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="classifier",version="1"} 7
nv_inference_pending_request_count{model="classifier",version="2"} 2
nv_inference_pending_request_count{model="embedder",version="1"} 1
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds (includes cached requests)
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="classifier",version="1"} 98000000
nv_inference_request_duration_us{model="classifier",version="2"} 24500000
nv_inference_request_duration_us{model="embedder",version="1"} 900000
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="classifier",version="1"} 36000000
nv_inference_queue_duration_us{model="classifier",version="2"} 9000000
nv_inference_queue_duration_us{model="embedder",version="1"} 100000
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in microseconds (does not include cached requests)
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="classifier",version="1"} 60000000
nv_inference_compute_infer_duration_us{model="classifier",version="2"} 15000000
nv_inference_compute_infer_duration_us{model="embedder",version="1"} 700000
# HELP nv_pinned_memory_pool_total_bytes Pinned memory pool total memory size, in bytes
# TYPE nv_pinned_memory_pool_total_bytes gauge
nv_pinned_memory_pool_total_bytes 268435456
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-5c1ee0b3-2c4f-7d1e-9a3b-0d6a1f2e3b4c"} 0.83
# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-5c1ee0b3-2c4f-7d1e-9a3b-0d6a1f2e3b4c"} 12884901888
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.12
"""

# A TensorRT-LLM ensemble (preprocessing -> tensorrt_llm -> postprocessing).
TRITON_TRTLLM_ENSEMBLE = """\
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 23
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 4
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 60
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 64
# HELP nv_trt_llm_runtime_memory_metrics TRT LLM runtime memory metrics
# TYPE nv_trt_llm_runtime_memory_metrics gauge
nv_trt_llm_runtime_memory_metrics{memory_type="pinned",model="tensorrt_llm",version="1"} 0
nv_trt_llm_runtime_memory_metrics{memory_type="gpu",model="tensorrt_llm",version="1"} 1610612736
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.97
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 3880
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="ensemble",version="1"} 812
nv_inference_request_success{model="preprocessing",version="1"} 812
nv_inference_request_success{model="tensorrt_llm",version="1"} 812
nv_inference_request_success{model="postprocessing",version="1"} 812
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="ensemble",reason="OTHER",version="1"} 0
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="ensemble",version="1"} 0
nv_inference_pending_request_count{model="preprocessing",version="1"} 2
nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 1
nv_inference_pending_request_count{model="postprocessing",version="1"} 0
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="ensemble",version="1"} 0
nv_inference_queue_duration_us{model="preprocessing",version="1"} 406000
nv_inference_queue_duration_us{model="tensorrt_llm",version="1"} 81200000
nv_inference_queue_duration_us{model="postprocessing",version="1"} 0
"""

# Triton right after start, before the first request: families present, zeros.
TRITON_IDLE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="x",version="1"} 0
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="x",version="1"} 0
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds (includes cached requests)
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="x",version="1"} 0
"""


def test_all_models_are_summed_when_no_model_is_named() -> None:
    m = parse_triton_metrics(TRITON_TWO_MODELS)
    assert m.pending == 10  # 7 + 2 + 1, both versions of classifier
    assert m.trtllm_waiting == 0
    assert m.queue == 10
    assert m.queue_duration_us == 45_100_000
    assert m.requests == 1550 + 6  # successes + failures of every reason


def test_model_filter_keeps_every_version_of_that_model() -> None:
    m = parse_triton_metrics(TRITON_TWO_MODELS, model="classifier")
    assert m.pending == 9
    assert m.queue_duration_us == 45_000_000
    assert m.requests == 1500 + 5


def test_trtllm_waiting_requests_add_to_the_queue() -> None:
    m = parse_triton_metrics(TRITON_TRTLLM_ENSEMBLE)
    assert m.pending == 3
    assert m.trtllm_waiting == 23  # only request_type="waiting", not active/max/...
    assert m.queue == 26


def test_trtllm_waiting_counts_even_when_the_ensemble_is_named() -> None:
    # The deployment names the ensemble; the backlog sits in tensorrt_llm's executor.
    m = parse_triton_metrics(TRITON_TRTLLM_ENSEMBLE, model="ensemble")
    assert m.pending == 0
    assert m.trtllm_waiting == 23
    assert m.queue == 23
    assert m.requests == 812


def test_idle_triton_reads_as_zero_not_as_an_error() -> None:
    assert parse_triton_metrics(TRITON_IDLE, model="x") == PodMetrics()


def test_a_model_that_is_not_loaded_is_an_error_not_a_zero_queue() -> None:
    with pytest.raises(MetricsParseError, match="no metrics for model 'missing'"):
        parse_triton_metrics(TRITON_TWO_MODELS, model="missing")


def test_untyped_exposition_without_help_lines_still_parses() -> None:
    text = 'nv_inference_pending_request_count{model="m",version="1"} 4\n'
    assert parse_triton_metrics(text).pending == 4


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("<html><body><h1>502 Bad Gateway</h1></body></html>", "not Prometheus"),
        ('{"status": "ok"}', "not Prometheus"),
        ('nv_inference_pending_request_count{model="m"} many\n', "not Prometheus"),
        ('nv_inference_pending_request_count{model="m" 3\n', "not Prometheus"),
        ("\x00\x01\x02garbage", "not Prometheus"),
        ("", "no Triton"),
        ("# just a comment\n", "no Triton"),
        ("go_goroutines 42\nprocess_cpu_seconds_total 1.5\n", "no Triton"),
        ('nv_inference_pending_request_count{model="m",version="1"} NaN\n', "unusable value"),
        ('nv_inference_pending_request_count{model="m",version="1"} -1\n', "unusable value"),
        ('nv_inference_queue_duration_us{model="m",version="1"} +Inf\n', "unusable value"),
    ],
)
def test_garbage_raises_metrics_parse_error(body: str, match: str) -> None:
    with pytest.raises(MetricsParseError, match=match):
        parse_triton_metrics(body)


def test_metrics_parse_error_is_a_value_error() -> None:
    assert issubclass(MetricsParseError, ValueError)


@pytest.mark.parametrize("cut", [40, 60, 75])
def test_body_cut_mid_line_is_garbage(cut: int) -> None:
    # A cut exactly at a line end is indistinguishable from a shorter
    # exposition; aiohttp catches those through Content-Length instead.
    start = TRITON_TWO_MODELS.index("nv_inference_pending_request_count{")
    with pytest.raises(MetricsParseError):
        parse_triton_metrics(TRITON_TWO_MODELS[: start + cut])


# --- queue time from counter deltas ----------------------------------------


def _pm(queue_us: float, requests: float) -> PodMetrics:
    return PodMetrics(queue_duration_us=queue_us, requests=requests)


def test_queue_wait_is_the_mean_over_requests_completed_in_the_interval() -> None:
    prev = {"a": _pm(1_000_000, 100), "b": _pm(0, 0)}
    cur = {"a": _pm(1_600_000, 110), "b": _pm(400_000, 10)}
    # (600 ms + 400 ms) of queueing over 20 requests = 50 ms
    assert queue_wait_ms(prev, cur) == pytest.approx(50.0)


def test_queue_wait_handles_a_counter_reset() -> None:
    prev = {"a": _pm(9_000_000, 900)}
    cur = {"a": _pm(300_000, 3)}  # Triton restarted: counters started over
    assert queue_wait_ms(prev, cur) == pytest.approx(100.0)


def test_queue_wait_skips_pods_without_a_previous_reading() -> None:
    prev = {"a": _pm(0, 0)}
    cur = {"a": _pm(20_000, 2), "new": _pm(99_000_000, 1)}
    assert queue_wait_ms(prev, cur) == pytest.approx(10.0)


def test_queue_wait_is_none_when_nothing_completed() -> None:
    prev = {"a": _pm(5, 5)}
    assert queue_wait_ms(prev, {"a": _pm(5, 5)}) is None
    assert queue_wait_ms({}, {"a": _pm(5, 5)}) is None


def test_queue_wait_from_two_real_scrapes() -> None:
    before = parse_triton_metrics(TRITON_IDLE, model="x")
    text = TRITON_IDLE.replace(
        'success{model="x",version="1"} 0', 'success{model="x",version="1"} 4'
    )
    text = text.replace(
        'duration_us{model="x",version="1"} 0', 'duration_us{model="x",version="1"} 1e6'
    )
    after = parse_triton_metrics(text, model="x")
    assert queue_wait_ms({"p": before}, {"p": after}) == pytest.approx(250.0)


# --- observation bookkeeping -------------------------------------------------


def test_observation_partial_and_usable() -> None:
    full = Observation(time=1.0, queue=3, pods=("a",), queues={"a": 3})
    part = Observation(time=1.0, queue=3, pods=("a", "b"), queues={"a": 3}, failed={"b": "x"})
    none = Observation(time=1.0, queue=0, pods=("a",), failed={"a": "timeout"})
    assert full.usable and not full.partial
    assert part.usable and part.partial and part.pods_ok == 1 and part.pods_total == 2
    assert not none.usable and not none.partial


def test_failure_summary_is_short_and_sorted() -> None:
    failed = {f"pod-{i}": "timeout after 1s" for i in range(5)}
    obs = Observation(time=0.0, queue=0, pods=tuple(failed), failed=failed)
    assert obs.failure_summary() == (
        "pod-0: timeout after 1s, pod-1: timeout after 1s, pod-2: timeout after 1s, and 2 more"
    )


# --- in-flight ----------------------------------------------------------------


def test_compute_time_is_summed_over_every_model() -> None:
    # In-flight belongs to the pod: an ensemble's steps all compute for it.
    m = parse_triton_metrics(TRITON_TWO_MODELS, model="classifier")
    assert m.compute_infer_us == 60_000_000 + 15_000_000 + 700_000
    assert m.trtllm_active is None


def test_trtllm_active_requests_are_the_in_flight_gauge() -> None:
    m = parse_triton_metrics(TRITON_TRTLLM_ENSEMBLE, model="ensemble")
    assert m.trtllm_active == 64
    assert pod_in_flight(None, m, None) == 64  # a gauge needs no previous scrape


def test_in_flight_is_the_compute_rate_between_two_scrapes() -> None:
    before = PodMetrics(compute_infer_us=10_000_000)
    after = PodMetrics(compute_infer_us=26_000_000)  # 16 s of compute in 2 s
    assert pod_in_flight(before, after, 2.0) == 8.0
    assert pod_in_flight(after, PodMetrics(compute_infer_us=4_000_000), 2.0) == 2.0  # restart
    assert pod_in_flight(None, after, 2.0) is None  # no previous reading
    assert pod_in_flight(before, after, 0.0) is None
    assert pod_in_flight(PodMetrics(), PodMetrics(), 2.0) is None  # not exported


# --- Issue 11: bounded work, and no value that breaks arithmetic ---------------------


def test_a_400_digit_sample_is_garbage_not_an_overflow() -> None:
    # Defect 6: the parser returns an int, and math.isfinite(int) raised OverflowError.
    body = 'nv_inference_pending_request_count{model="m",version="1"} ' + "9" * 400 + "\n"
    with pytest.raises(MetricsParseError, match="unusable value"):
        parse_triton_metrics(body)


def test_samples_that_sum_beyond_precision_are_garbage() -> None:
    line = 'nv_inference_pending_request_count{{model="m",version="{v}"}} 9e15\n'
    body = line.format(v=1) + line.format(v=2)
    with pytest.raises(MetricsParseError, match="sums to"):
        parse_triton_metrics(body)


@pytest.mark.parametrize(
    "line",
    [
        'nv_inference_pending_request_count{model="m",version="1"} 1\n',
        'other_family{a="b"} 1\n',
    ],
)
def test_an_8_mib_body_is_refused_before_any_parsing(line: str) -> None:
    # Defect 12: parsing 8 MiB took 3-6 s, in a thread the scrape deadline cannot stop.
    body = line * (8 * 1024 * 1024 // len(line))
    started = time.monotonic()
    with pytest.raises(MetricsParseError, match="larger than any Triton exposition"):
        parse_triton_metrics(body)
    assert time.monotonic() - started < 0.5


def test_many_short_lines_are_refused_too() -> None:
    body = "a 1\n" * (MAX_EXPOSITION_LINES + 1)
    with pytest.raises(MetricsParseError, match="lines"):
        parse_triton_metrics(body)


def test_the_largest_accepted_body_parses_in_bounded_time() -> None:
    line = 'nv_inference_pending_request_count{model="m",version="1"} 1\n'
    body = line * MAX_EXPOSITION_LINES
    started = time.monotonic()
    assert parse_triton_metrics(body).pending == MAX_EXPOSITION_LINES
    assert time.monotonic() - started < 2.0  # ~0.2 s on one idle core
