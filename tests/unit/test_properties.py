"""Properties of the pure core over generated inputs (hypothesis).

* parse → render → status: any ModelDeployment body, valid or not, is either
  refused with a Problem or rendered into children that are JSON, small enough
  to store, validly and injectively named, free of credentials, and whose
  command, args and env values the kubelet passes through literally; status
  built from them never raises.
* the metric parser: any text is a PodMetrics of finite, bounded numbers or a
  MetricsParseError, never another exception.
* decide(): any sequence of observations (NaN, infinities and huge values
  included) never raises, never exceeds maxReplicas or the capacity cap, and
  never scales down on unusable metrics.

The CI profile runs a few thousand examples; ``make fuzz`` runs the same
properties with at least 100,000 (see tests/unit/conftest.py).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.kubelet_expansion import expand
from turnpike.api import uris
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.api.status import MAX_CONDITION_MESSAGE, ModelDeploymentStatus
from turnpike.autoscale.history import History
from turnpike.autoscale.policy import MAX_USABLE_METRIC, Params, decide
from turnpike.autoscale.signal import (
    MAX_SAMPLE_VALUE,
    MetricsParseError,
    Observation,
    parse_triton_metrics,
)
from turnpike.reconcile.children import MAX_CHILD_BYTES, desired_children, object_bytes
from turnpike.reconcile.validation import parse_model_deployment
from turnpike.render import child_name, label_value
from turnpike.render.names import is_dns1035_label, is_label_value
from turnpike.status import Problem, next_status
from turnpike.status.conditions import model_conditions, rollout_of


def examples(share: float) -> settings:
    """This property's share of the loaded profile's max_examples."""
    return settings(max_examples=max(1, int(settings.default.max_examples * share)))


# --- ModelDeployment bodies -----------------------------------------------------------

# Characters that have broken something before: Kubernetes' $( expansion, URL
# userinfo, path traversal, Unicode whitespace (Go's \s is ASCII only), controls.
TRICKY = "$()@:/.\\-_%?#=\"' \t\n\v\x00\x85\u00a0\u2028\u200bÉé😀"
tricky_text = st.text(st.sampled_from(TRICKY) | st.characters(), max_size=40)
dns_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
hex8 = st.text("0123456789abcdef", min_size=8, max_size=8)


@st.composite
def md_names(draw: st.DrawFn) -> str:
    """DNS subdomains as the API server admits them, biased to the awkward ones."""
    kind = draw(st.sampled_from(["label", "dotted", "digit", "derived-looking", "long", "any"]))
    if kind == "label":
        return draw(dns_label)
    if kind == "dotted":
        return ".".join(draw(st.lists(dns_label, min_size=2, max_size=4)))
    if kind == "digit":
        return draw(st.from_regex(r"[0-9][-a-z0-9.]{0,10}[a-z0-9]", fullmatch=True))
    if kind == "derived-looking":
        return f"{draw(dns_label)}-{draw(hex8)}"
    if kind == "long":
        return ".".join(["a" * 60, "b" * 60, "c" * 60, draw(dns_label)])[:253].rstrip(".-")
    return draw(st.text(string.ascii_lowercase + string.digits + ".-", min_size=1, max_size=253))


# Text a URI path may hold: anything but separators and controls, with the
# characters that matter ($( for expansion, @ and : for userinfo) over-weighted.
path_text = st.text(
    st.sampled_from("$()@:.-_%?#=é😀") | st.characters(blacklist_categories=("Z", "Cc")),
    min_size=1,
    max_size=20,
)
hf_part = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}", fullmatch=True)
dns_subdomain = st.lists(dns_label, min_size=1, max_size=3).map(".".join)


@st.composite
def valid_uris(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["s3", "gs", "pvc", "hf", "http", "https"]))
    segments = draw(st.lists(path_text.filter(lambda p: p not in ("..", ".")), max_size=3))
    path = "".join(f"/{p}" for p in segments).replace("//", "/")
    if scheme == "hf":
        return f"hf://{draw(hf_part)}/{draw(hf_part)}{path}"
    return f"{scheme}://{draw(dns_subdomain)}{path}"


@st.composite
def invalid_uris(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["s3", "gs", "pvc", "hf", "http", "https", "ftp", ""]))
    userinfo = draw(st.sampled_from(["", "KEY:SECRET@", "u@"]))
    host = draw(st.one_of(dns_label, st.just("Models"), st.just(".."), tricky_text))
    parts = draw(st.lists(st.one_of(dns_label, st.just(".."), tricky_text), max_size=4))
    return f"{scheme}://{userinfo}{host}" + "".join(f"/{p}" for p in parts)


valid_quantities = st.from_regex(
    r"[0-9]{1,4}(\.[0-9]{1,3})?([KMGTP]i|[mkMG])?|[0-9]{1,3}e[0-9]", fullmatch=True
)
quantities = st.one_of(
    valid_quantities,
    st.from_regex(r"[+-]?[0-9.]{1,6}([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9.]{1,3})?", fullmatch=True),
    st.sampled_from(["1e1.5", "-1Gi", "", "1 Gi", "Gi", "9" * 64]),
)
valid_resource_names = st.sampled_from(
    ["cpu", "memory", "ephemeral-storage", "hugepages-2Mi", "nvidia.com/gpu", "example.com/fpga"]
)
resource_names = st.one_of(
    valid_resource_names,
    st.sampled_from(["gpu", "", "bad key", "kubernetes.io/x", "requests.a/b", "a/b/c"]),
    tricky_text,
)
env_names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True)
any_text = st.text(st.sampled_from(TRICKY) | st.characters(), max_size=60)


# Fields a body may get wrong. Most bodies get none wrong (so that the renderer
# sees them), the rest one or two: a body with every field perturbed only ever
# exercises the first refusal.
FIELDS = (
    "uri",
    "backend",
    "name",
    "parallelism",
    "nodes",
    "count",
    "product",
    "args",
    "env",
    "env-key",
    "env-shape",
    "resource-name",
    "quantity",
    "image",
    "replicas",
    "bounds",
)
broken_fields = st.one_of(
    st.just(frozenset[str]()),
    st.frozensets(st.sampled_from(FIELDS), min_size=1, max_size=2),
)


def chooser(broken: frozenset[str]) -> Any:
    """``either(field, valid, invalid)``: the invalid strategy for broken fields."""

    def either(field: str, valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> Any:
        return invalid if field in broken else valid

    return either


@st.composite
def env_vars(draw: st.DrawFn, broken: frozenset[str]) -> dict[str, Any]:
    either = chooser(broken)
    name = draw(either("env", env_names, tricky_text))
    if draw(st.integers(0, 3)) == 0:
        key = draw(
            either("env-key", st.from_regex(r"[-._a-zA-Z0-9]{1,20}", fullmatch=True), tricky_text)
        )
        entry: dict[str, Any] = {
            "name": name,
            "secretKeyRef": {"name": draw(dns_label), "key": key},
        }
    else:
        entry = {"name": name, "value": draw(any_text)}
    if "env-shape" in broken:  # both value and secretKeyRef, or neither
        entry = {"name": name} if "value" in entry else {**entry, "value": "v"}
    return entry


@st.composite
def resources(draw: st.DrawFn, broken: frozenset[str]) -> dict[str, Any]:
    either = chooser(broken)
    names = either("resource-name", valid_resource_names, resource_names)
    amounts = either("quantity", valid_quantities, quantities)
    limits = draw(st.dictionaries(names, amounts, max_size=3))
    # Requests equal to limits (extended resources cannot be overcommitted) or
    # cpu/memory without a limit.
    requests = {k: v for k, v in limits.items() if draw(st.booleans())}
    extra = draw(st.sampled_from(["cpu", "memory"]))
    if extra not in limits and draw(st.booleans()):
        requests[extra] = draw(amounts)
    return {"requests": requests, "limits": limits}


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    broken = draw(broken_fields)
    either = chooser(broken)
    multi_gpu = draw(st.integers(0, 2)) == 0
    backends = (
        ["tensorrtllm", "vllm"]
        if multi_gpu
        else ["python", "onnxruntime", "pytorch", "tensorrtllm"]
    )
    model: dict[str, Any] = {
        "uri": draw(either("uri", valid_uris(), invalid_uris())),
        "backend": draw(either("backend", st.sampled_from(backends), st.just("tf"))),
    }
    if draw(st.booleans()):
        model_names = st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)
        model["name"] = draw(either("name", model_names, tricky_text))
    if draw(st.booleans()):
        model["credentials"] = {"name": draw(dns_label)}
    gpu: dict[str, Any] = {}
    if multi_gpu:
        ranks = either("parallelism", st.sampled_from([1, 2, 4, 8]), st.integers(-1, 70))
        gpu["tensorParallelism"] = draw(ranks)
        gpu["pipelineParallelism"] = draw(ranks)
        if draw(st.booleans()):
            gpu["nodesPerReplica"] = draw(
                either("nodes", st.sampled_from([1, 2, 4]), st.integers(-1, 20))
            )
    if draw(st.integers(0, 3)) == 0:
        world = gpu.get("tensorParallelism", 1) * gpu.get("pipelineParallelism", 1)
        gpu["count"] = draw(either("count", st.just(world), st.integers(0, 70)))
    if draw(st.booleans()):
        products = st.sampled_from(["NVIDIA-H100-80GB-HBM3", "A100", "a.b_c-D"])
        gpu["product"] = draw(either("product", products, tricky_text))
    long_args = st.text(min_size=900, max_size=1100)
    runtime: dict[str, Any] = {
        "args": draw(st.lists(either("args", any_text, long_args), max_size=8)),
        "env": draw(st.lists(env_vars(broken), max_size=4)),
        "resources": draw(resources(broken)),
    }
    if draw(st.booleans()):
        runtime["shmSize"] = draw(either("quantity", valid_quantities, quantities))
    if draw(st.integers(0, 4)) == 0:
        runtime["image"] = draw(either("image", st.just("registry.local/triton:1"), tricky_text))
    spec: dict[str, Any] = {"model": model, "gpu": gpu, "runtime": runtime}
    spec["replicas"] = draw(either("replicas", st.integers(0, 20), st.integers(-5, -1)))
    if draw(st.booleans()):
        low = draw(st.integers(1, 10))
        spec["minReplicas"] = low
        spec["maxReplicas"] = draw(either("bounds", st.integers(low, 30), st.integers(0, low - 1)))
        spec["autoscaling"] = {"enabled": draw(st.booleans())}
    return spec


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": draw(md_names()), "namespace": "team-a", "uid": "u", "generation": 1},
        "spec": draw(specs()),
    }


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def _expanded_strings(pod_spec: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for container in [*pod_spec.get("initContainers", []), *pod_spec["containers"]]:
        out += [*container.get("command", []), *container.get("args", [])]
        out += [e["value"] for e in container.get("env", []) if "value" in e]
    return out


LABEL_KEY = re.compile(r"([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


@examples(6)
@given(body=bodies(), replicas=st.integers(0, 50), surge=st.booleans(), message=tricky_text)
def test_any_body_is_refused_or_rendered_into_storable_literal_children(
    body: dict[str, Any], replicas: int, surge: bool, message: str
) -> None:
    parsed = parse_model_deployment(body)
    if isinstance(parsed, Problem):
        assert parsed.reason == "InvalidSpec" and parsed.message
        assert "SECRET" not in parsed.message
        return
    assert isinstance(parsed, ModelDeployment)
    children = desired_children(parsed, replicas, "uid", surge=surge)
    text = json.dumps(children)
    assert json.loads(text) == children
    for child in children:
        assert object_bytes(child) <= MAX_CHILD_BYTES
        name = child["metadata"]["name"]
        assert is_dns1035_label(name), name
        for key, value in child["metadata"]["labels"].items():
            assert LABEL_KEY.fullmatch(key) and is_label_value(value), (key, value)
    for s in _strings(children):
        assert not uris.has_userinfo(s), s
    (deployment,) = [c for c in children if c["kind"] in ("Deployment", "LeaderWorkerSet")]
    if deployment["kind"] == "Deployment":
        pod_specs = [deployment["spec"]["template"]["spec"]]
    else:
        template = deployment["spec"]["leaderWorkerTemplate"]
        pod_specs = [template["leaderTemplate"]["spec"], template["workerTemplate"]["spec"]]
    referenced: list[str] = []
    for pod_spec in pod_specs:
        for s in _expanded_strings(pod_spec):
            expand(s, lambda name: referenced.append(name) or "")
    assert referenced == [], "the kubelet would substitute these"
    # The URI arrives where Triton or the download reads it, exactly as written.
    arrived = [expand(s, lambda n: f"$({n})") for s in _expanded_strings(pod_specs[0])]
    uri = parsed.spec.model.uri
    assert any(uri in s for s in arrived) or uri.startswith(("pvc://", "hf://"))

    # Status from what the Deployment controller and the scheduler could say.
    live = {
        **deployment,
        "status": {
            "conditions": [{"type": "ReplicaFailure", "status": "True", "message": message * 1000}]
        },
    }
    rollout = rollout_of(live, replicas)
    wanted = model_conditions(1, rollout, None, pending=message * 2000)
    status = next_status(
        ModelDeploymentStatus(),
        1,
        replicas,
        live,
        None,
        "2026-12-01T00:00:00Z",
        endpoint="http://x:8000",
        selector="a=b",
        gpus_per_replica=parsed.spec.gpu.per_replica,
        conditions=wanted,
    )
    assert all(len(c.message) <= MAX_CONDITION_MESSAGE for c in status.conditions)
    ModelDeploymentStatus.model_validate(status.to_k8s())


@examples(3)
@given(names=st.lists(md_names(), min_size=1, max_size=8, unique=True), feedback=st.booleans())
def test_child_names_and_selector_labels_are_injective(names: list[str], feedback: bool) -> None:
    if feedback:  # adversarial: name a ModelDeployment after another one's child
        names = list(dict.fromkeys([*names, *(child_name(n) for n in names)]))
        names = list(dict.fromkeys([*names, *(label_value(n) for n in names)]))
    for suffix in ("", "metrics"):
        derived = [child_name(n, suffix) for n in names]
        assert len(set(derived)) == len(names)
        assert all(is_dns1035_label(d) for d in derived)
    labels = [label_value(n) for n in names]
    assert len(set(labels)) == len(names)
    assert all(is_label_value(v) for v in labels)


# --- The metric parser ---------------------------------------------------------------

FAMILIES = [
    "nv_inference_pending_request_count",
    "nv_inference_queue_duration_us",
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_compute_infer_duration_us",
    "nv_trt_llm_request_metrics",
    "nv_gpu_utilization",
    "go_goroutines",
]
sample_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**400).map(str),
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e308", "9e15", "0", "many", ""]),
)


@st.composite
def expositions(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        family = draw(st.sampled_from(FAMILIES))
        kind = draw(st.sampled_from(["sample", "sample", "type", "help", "junk"]))
        if kind == "type":
            lines.append(f"# TYPE {family} {draw(st.sampled_from(['gauge', 'counter', 'x']))}")
        elif kind == "help":
            lines.append(f"# HELP {family} {draw(tricky_text)}")
        elif kind == "junk":
            lines.append(draw(tricky_text))
        else:
            labels = {
                "model": draw(st.sampled_from(["m", "other"]) | tricky_text),
                "version": "1",
                "request_type": draw(st.sampled_from(["waiting", "active", "x"])),
            }
            inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{family}{{{inner}}} {draw(sample_values)}")
    text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))
    return text[: draw(st.integers(0, len(text)))] if draw(st.booleans()) else text


@examples(15)
@given(text=st.one_of(expositions(), st.text()), model=st.sampled_from([None, "m", "missing"]))
def test_the_metric_parser_never_raises_anything_but_parse_errors(
    text: str, model: str | None
) -> None:
    try:
        metrics = parse_triton_metrics(text, model)
    except MetricsParseError:
        return
    for value in (
        metrics.pending,
        metrics.trtllm_waiting,
        metrics.queue_duration_us,
        metrics.requests,
        metrics.compute_infer_us,
        metrics.trtllm_active,
    ):
        assert value is None or (math.isfinite(value) and 0 <= value <= 2 * MAX_SAMPLE_VALUE)


# --- decide() --------------------------------------------------------------------

any_float = st.floats(allow_nan=True, allow_infinity=True)
metric_value = st.one_of(st.floats(0, 1e4), any_float, st.sampled_from([1e308, 2e308, -1.0]))


@st.composite
def params(draw: st.DrawFn) -> Params:
    low = draw(st.integers(0, 20))
    return Params(
        min_replicas=low,
        max_replicas=draw(st.integers(max(low, 1), 60)),
        metric=draw(st.sampled_from(["queueDepth", "queueTime"])),
        target=draw(st.floats(1e-300, 1e6) | st.sampled_from([5e-324, 0.1, 4.0])),
        tolerance=draw(st.floats(0, 0.99)),
        scrape_interval_s=draw(st.sampled_from([1.0, 2.0, 15.0])),
        panic_window_s=draw(st.sampled_from([0.0, 6.0, 60.0])),
        stabilization_window_s=draw(st.sampled_from([0.0, 10.0, 120.0])),
        max_scale_up_rate=draw(st.floats(1.01, 100)),
        max_scale_down_step=draw(st.integers(1, 5)),
        scale_down_period_s=draw(st.sampled_from([0.0, 60.0])),
        scale_up_base=draw(st.sampled_from(["ready", "spec"])),
    )


@st.composite
def ticks(draw: st.DrawFn) -> dict[str, Any]:
    pods = draw(st.integers(0, 6))
    failed = draw(st.integers(0, pods))
    names = tuple(f"p{i}" for i in range(pods))
    queue = draw(metric_value)
    observation = None
    if draw(st.integers(0, 5)) > 0:
        observation = Observation(
            time=draw(st.sampled_from([0.0, -3.0, -60.0]) | any_float),  # relative to now
            queue=queue,
            queue_time_ms=draw(st.none() | metric_value),
            pods=names,
            queues={n: queue for n in names[failed:]},
            failed={n: "timeout" for n in names[:failed]},
            in_flight=draw(st.none() | metric_value),
        )
    return {
        "advance": draw(st.sampled_from([1.0, 2.0, 5.0, 30.0])),
        "ready": draw(st.integers(0, 8)),
        "starting": draw(st.integers(0, 4)),
        "observation": observation,
        "cap": draw(st.none() | st.integers(-2, 40)),
    }


def _usable(observation: Observation | None, metric: str) -> bool:
    """Whether the policy may act on the observation's value for ``metric``."""
    if observation is None or not observation.usable or observation.partial:
        return False
    if not math.isfinite(observation.time):
        return False
    if metric == "queueTime" and observation.queue_time_ms is None:
        return observation.queue == 0  # nothing completed, nothing waits: idle
    value = observation.queue if metric == "queueDepth" else observation.queue_time_ms
    return value is not None and math.isfinite(value) and 0 <= value <= MAX_USABLE_METRIC


@examples(6)
@given(p=params(), start=st.integers(0, 60), steps=st.lists(ticks(), min_size=1, max_size=20))
def test_decide_never_raises_never_overshoots_and_never_drops_on_bad_metrics(
    p: Params, start: int, steps: list[dict[str, Any]]
) -> None:
    now, current, history = 1_767_225_600.0, start, History.empty(p.metric)
    for step in steps:
        now += step["advance"]
        observation: Observation | None = step["observation"]
        if observation is not None and math.isfinite(observation.time):
            observation = Observation(**{**vars_of(observation), "time": now + observation.time})
        cap_value = step["cap"]
        budget: Callable[[int], int | None] | None = (
            None if cap_value is None else (lambda wanted, c=cap_value: min(wanted, c))
        )
        d = decide(
            p,
            current=current,
            ready=step["ready"],
            starting=step["starting"],
            history=history,
            now=now,
            observation=observation,
            budget=budget,
        )
        assert d.current == current
        assert d.replicas <= max(p.max_replicas, 0)
        if cap_value is not None and d.replicas > current:
            assert d.replicas <= cap_value, d.reason
        if d.metrics_stale or d.metrics_partial or not _usable(observation, p.metric):
            assert d.replicas >= min(current, p.max_replicas), d.reason
        if d.per_replica is not None:
            assert math.isfinite(d.per_replica)
        History.from_dict(json.loads(json.dumps(d.history.to_dict())))  # storable as status
        history, current = d.history, d.replicas


def vars_of(observation: Observation) -> dict[str, Any]:
    return {name: getattr(observation, name) for name in Observation.__slots__}
