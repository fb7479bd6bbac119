"""The Deployment a ModelDeployment renders to, as the scheduler, the kubelet and
Triton will see it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.kubelet_expansion import expand_all
from turnpike.api import ModelDeployment
from turnpike.api import modeldeployment as mdapi
from turnpike.api.constants import DEFAULT_RUNTIME_IMAGE
from turnpike.reconcile.children import MAX_CHILD_BYTES, desired_children, object_bytes, too_large
from turnpike.render import render_deployment, selector_labels
from turnpike.render.command import mpi_ranks

GPU_NODE_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
BACKENDS = ["tensorrtllm", "python", "onnxruntime", "vllm", "pytorch"]


def make_md(
    name: str = "llama", namespace: str = "ml", model: dict[str, Any] | None = None, **spec: Any
) -> ModelDeployment:
    return ModelDeployment.from_k8s(
        {
            "apiVersion": "turnpike.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"uri": "s3://models/llama", **(model or {})}, **spec},
        }
    )


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def triton(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod(deployment)["containers"]
    (container,) = [c for c in containers if c["name"] == "triton"]
    return container


def argv(deployment: dict[str, Any]) -> list[str]:
    container = triton(deployment)
    return [*container["command"], *container["args"]]


def ranks(deployment: dict[str, Any]) -> list[list[str]]:
    return mpi_ranks(argv(deployment))


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, str]) -> bool:
    """Kubernetes' toleration matching (core/v1 Toleration.ToleratesTaint)."""
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        if t.get("key") and t["key"] != taint["key"]:
            continue
        if t.get("operator", "Equal") == "Exists" or t.get("value") == taint.get("value"):
            return True
    return False


def required_node_expressions(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    terms = pod(deployment)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert len(terms) == 1
    expressions: list[dict[str, Any]] = terms[0]["matchExpressions"]
    return expressions


# --- GPUs and scheduling -------------------------------------------------------


@pytest.mark.parametrize(
    ("tp", "pp", "gpus"), [(1, 1, "1"), (2, 1, "2"), (8, 1, "8"), (4, 2, "8"), (1, 4, "4")]
)
def test_pod_requests_and_limits_tp_times_pp_gpus(tp: int, pp: int, gpus: str) -> None:
    d = render_deployment(
        make_md(gpu={"tensorParallelism": tp, "pipelineParallelism": pp}), replicas=1
    )
    resources = triton(d)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == gpus
    assert resources["requests"]["nvidia.com/gpu"] == gpus


def test_explicit_gpu_count_is_requested() -> None:
    d = render_deployment(make_md(gpu={"count": 1}), replicas=1)
    assert triton(d)["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_cpu_and_memory_come_from_runtime_resources() -> None:
    md = make_md(
        runtime={
            "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "96Gi"}}
        }
    )
    resources = triton(render_deployment(md, replicas=1))["resources"]
    assert resources["requests"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}
    assert resources["limits"] == {"memory": "96Gi", "nvidia.com/gpu": "1"}


def test_gpu_block_wins_over_a_gpu_quantity_in_runtime_resources() -> None:
    # Capacity accounting counts spec.gpu; the pod must not ask for something else.
    md = make_md(
        gpu={"tensorParallelism": 2},
        model={"backend": "vllm"},
        runtime={"resources": {"limits": {"nvidia.com/gpu": "7"}}},
    )
    assert triton(render_deployment(md, replicas=1))["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_only_the_serving_container_gets_gpus() -> None:
    md = make_md(model={"uri": "hf://org/model"}, gpu={"tensorParallelism": 4})
    d = render_deployment(md, replicas=1)
    for init in pod(d)["initContainers"]:
        assert "nvidia.com/gpu" not in json.dumps(init.get("resources", {}))


def test_tolerates_the_nvidia_gpu_taint() -> None:
    assert tolerates(pod(render_deployment(make_md(), replicas=1))["tolerations"], GPU_NODE_TAINT)


def test_does_not_tolerate_unrelated_taints_by_default() -> None:
    tolerations = pod(render_deployment(make_md(), replicas=1))["tolerations"]
    assert not tolerates(tolerations, {"key": "dedicated", "value": "x", "effect": "NoSchedule"})
    assert not tolerates(
        tolerations, {"key": "nvidia.com/gpu", "value": "x", "effect": "NoExecute"}
    )


def test_gpu_product_pins_pods_to_that_product() -> None:
    d = render_deployment(make_md(gpu={"product": "NVIDIA-H100-80GB-HBM3"}), replicas=1)
    assert required_node_expressions(d) == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}
    ]


def test_without_product_pods_go_to_any_gpu_node() -> None:
    d = render_deployment(make_md(), replicas=1)
    assert required_node_expressions(d) == [
        {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}
    ]


def test_tier_tolerations_node_selector_and_priority_apply() -> None:
    d = render_deployment(
        make_md(),
        replicas=3,
        priority_class="turnpike-tier-gold",
        extra_node_selector={"pool": "h100", "cloud.google.com/gke-spot": "true"},
        extra_tolerations=[
            {
                "key": "cloud.google.com/gke-spot",
                "operator": "Equal",
                "value": "true",
                "effect": "NoSchedule",
            }
        ],
    )
    spec = pod(d)
    assert spec["priorityClassName"] == "turnpike-tier-gold"
    assert spec["nodeSelector"] == {"cloud.google.com/gke-spot": "true", "pool": "h100"}
    spot = {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"}
    assert tolerates(spec["tolerations"], spot)
    assert tolerates(spec["tolerations"], GPU_NODE_TAINT)


def test_no_tier_means_no_priority_class_or_node_selector() -> None:
    spec = pod(render_deployment(make_md(), replicas=1))
    assert "priorityClassName" not in spec
    assert "nodeSelector" not in spec


def test_tolerations_do_not_depend_on_input_order_and_are_not_duplicated() -> None:
    a = {"key": "a", "operator": "Exists"}
    b = {"key": "b", "operator": "Exists", "effect": "NoExecute"}
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    first = render_deployment(make_md(), replicas=1, extra_tolerations=[a, b, gpu])
    second = render_deployment(make_md(), replicas=1, extra_tolerations=[b, a, a])
    # A reordered list would change the pod template and roll every replica.
    assert pod(first)["tolerations"] == pod(second)["tolerations"]
    assert len(pod(first)["tolerations"]) == 3


def test_replicas_spread_across_nodes_without_blocking_scheduling() -> None:
    d = render_deployment(make_md(), replicas=4)
    (spread,) = pod(d)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["maxSkew"] == 1
    assert spread["labelSelector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]


# --- Deployment shape -----------------------------------------------------------


def test_replicas_are_the_argument_not_the_spec() -> None:
    assert render_deployment(make_md(replicas=2), replicas=5)["spec"]["replicas"] == 5
    assert render_deployment(make_md(), replicas=0)["spec"]["replicas"] == 0


def test_negative_replicas_are_refused() -> None:
    with pytest.raises(ValueError, match="replicas"):
        render_deployment(make_md(), replicas=-1)


def test_rollout_keeps_serving_capacity_and_surges_by_one_replica() -> None:
    strategy = render_deployment(make_md(), replicas=3)["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_revision_history_is_kept_short() -> None:
    assert render_deployment(make_md(), replicas=1)["spec"]["revisionHistoryLimit"] <= 5


def test_selector_selects_the_pods_and_survives_spec_changes() -> None:
    before = render_deployment(make_md(), replicas=1)
    after = render_deployment(
        make_md(
            model={"uri": "pvc://weights/llama", "backend": "vllm", "name": "llama"},
            gpu={"tensorParallelism": 4, "product": "NVIDIA-A100-SXM4-80GB"},
            runtime={"image": "example.com/triton:custom"},
        ),
        replicas=9,
    )
    selector = before["spec"]["selector"]["matchLabels"]
    # The selector is immutable: any spec change that altered it would make the
    # Deployment impossible to update.
    assert after["spec"]["selector"]["matchLabels"] == selector
    labels = before["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert selector == selector_labels(make_md())


def test_deployments_of_different_model_deployments_select_disjoint_pods() -> None:
    a = render_deployment(make_md("a" * 70 + "x"), replicas=1)
    b = render_deployment(make_md("a" * 70 + "y"), replicas=1)
    assert a["metadata"]["name"] != b["metadata"]["name"]
    a_labels = a["spec"]["template"]["metadata"]["labels"]
    b_selector = b["spec"]["selector"]["matchLabels"]
    assert not b_selector.items() <= a_labels.items()


def test_metadata_and_labels() -> None:
    d = render_deployment(make_md("llama", "team-a"), replicas=1)
    assert d["apiVersion"] == "apps/v1"
    assert d["kind"] == "Deployment"
    assert d["metadata"]["name"] == "llama"
    assert d["metadata"]["namespace"] == "team-a"
    assert d["metadata"]["labels"] == {
        "app.kubernetes.io/name": "llama",
        "app.kubernetes.io/instance": "llama",
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/managed-by": "turnpike",
        "app.kubernetes.io/part-of": "turnpike",
        "turnpike.dev/model-deployment": "llama",
    }
    assert "ownerReferences" not in d["metadata"]


def test_a_model_deployment_without_namespace_is_refused() -> None:
    md = ModelDeployment.from_k8s(
        {"metadata": {"name": "llama"}, "spec": {"model": {"uri": "s3://b/m"}}}
    )
    with pytest.raises(ValueError, match="namespace"):
        render_deployment(md, replicas=1)


def test_prometheus_scrapes_the_metrics_port() -> None:
    annotations = render_deployment(make_md(), replicas=1)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8002",
        "prometheus.io/path": "/metrics",
    }


def test_rendering_is_deterministic_and_json_serialisable() -> None:
    md = make_md(
        model={"uri": "hf://org/model", "credentials": {"name": "hf"}, "name": "ensemble"},
        gpu={"tensorParallelism": 4, "pipelineParallelism": 2, "product": "NVIDIA-H100-80GB-HBM3"},
        runtime={"env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]},
    )
    kwargs: dict[str, Any] = {
        "replicas": 2,
        "priority_class": "p",
        "extra_node_selector": {"b": "2", "a": "1"},
        "extra_tolerations": [
            {"key": "z", "operator": "Exists"},
            {"key": "y", "operator": "Exists"},
        ],
    }
    first, second = render_deployment(md, **kwargs), render_deployment(md, **kwargs)
    assert json.dumps(first) == json.dumps(second)


def test_rendered_objects_share_no_mutable_parts() -> None:
    d = render_deployment(make_md(model={"uri": "hf://org/model"}), replicas=1)
    d["spec"]["selector"]["matchLabels"]["extra"] = "x"
    triton(d)["env"].append({"name": "X", "value": "1"})
    assert "extra" not in pod(d)["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]
    assert "extra" not in d["spec"]["template"]["metadata"]["labels"]
    assert {"name": "X", "value": "1"} not in pod(d)["initContainers"][0]["env"]


# --- The container ----------------------------------------------------------------


def test_serves_http_grpc_and_metrics_on_tritons_ports() -> None:
    ports = {
        p["name"]: p["containerPort"]
        for p in triton(render_deployment(make_md(), replicas=1))["ports"]
    }
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}


def test_default_image_is_the_pinned_runtime() -> None:
    assert triton(render_deployment(make_md(), replicas=1))["image"] == DEFAULT_RUNTIME_IMAGE


def test_custom_image_is_used() -> None:
    md = make_md(runtime={"image": "registry.example.com/triton:25.10-custom"})
    assert (
        triton(render_deployment(md, replicas=1))["image"]
        == "registry.example.com/triton:25.10-custom"
    )


def test_shared_memory_is_a_memory_volume_of_the_requested_size() -> None:
    d = render_deployment(make_md(runtime={"shmSize": "16Gi"}), replicas=1)
    volumes = {v["name"]: v for v in pod(d)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in triton(d)["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}


def test_default_shared_memory_is_larger_than_the_container_default() -> None:
    d = render_deployment(make_md(), replicas=1)
    (shm,) = [v for v in pod(d)["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert shm["emptyDir"]["sizeLimit"] == "2Gi"


def test_startup_allows_thirty_minutes_for_a_large_model_load() -> None:
    startup = triton(render_deployment(make_md(), replicas=1))["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert 30 * 60 <= budget <= 35 * 60


def test_readiness_and_liveness_use_tritons_health_endpoints() -> None:
    container = triton(render_deployment(make_md(), replicas=1))
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # A wedged server is restarted within a couple of minutes, a slow one is not.
    liveness = container["livenessProbe"]
    assert 30 <= liveness["periodSeconds"] * liveness["failureThreshold"] <= 120


def test_probes_target_the_http_port() -> None:
    container = triton(render_deployment(make_md(), replicas=1))
    http = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert http == 8000
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


def test_draining_finishes_before_the_kubelet_kills_triton() -> None:
    d = render_deployment(make_md(), replicas=1)
    grace = pod(d)["terminationGracePeriodSeconds"]
    pre_stop = triton(d)["lifecycle"]["preStop"]["sleep"]["seconds"]
    (exit_timeout,) = [a for a in argv(d) if a.startswith("--exit-timeout-secs=")]
    assert 30 <= grace <= 120
    assert pre_stop + int(exit_timeout.split("=")[1]) < grace


def test_runs_as_tritons_unprivileged_user_with_nothing_extra() -> None:
    d = render_deployment(make_md(model={"uri": "hf://org/model"}), replicas=1)
    spec = pod(d)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in [*spec["containers"], *spec["initContainers"]]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == 1000
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_env_values_and_secret_references_are_passed_in_order() -> None:
    md = make_md(
        runtime={
            "env": [
                {"name": "LOG_LEVEL", "value": "debug"},
                {"name": "API_KEY", "secretKeyRef": {"name": "keys", "key": "openai"}},
                {"name": "EMPTY", "value": ""},
            ]
        }
    )
    assert triton(render_deployment(md, replicas=1))["env"] == [
        {"name": "LOG_LEVEL", "value": "debug"},
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "openai"}}},
        {"name": "EMPTY", "value": ""},
    ]


def test_credentials_secret_becomes_environment() -> None:
    md = make_md(model={"credentials": {"name": "s3-creds"}})
    assert triton(render_deployment(md, replicas=1))["envFrom"] == [
        {"secretRef": {"name": "s3-creds"}}
    ]


def test_no_credentials_no_env_from() -> None:
    assert triton(render_deployment(make_md(), replicas=1))["envFrom"] == []


def test_credentials_never_appear_inline() -> None:
    md = make_md(
        model={"credentials": {"name": "s3-creds"}},
        runtime={"env": [{"name": "TOKEN", "secretKeyRef": {"name": "tok", "key": "t"}}]},
    )
    text = json.dumps(render_deployment(md, replicas=1))
    assert '"value": "t"' not in text
    assert '"secretKeyRef": {"name": "tok", "key": "t"}' in text


# --- Command line per backend --------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_on_one_gpu_runs_a_single_tritonserver(backend: str) -> None:
    d = render_deployment(make_md(model={"backend": backend}), replicas=1)
    args = argv(d)
    assert args[0] == "tritonserver"
    assert "mpirun" not in args
    assert "--model-repository=s3://models/llama" in args
    for flag in ("--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"):
        assert flag in args
    assert "--allow-metrics=true" in args
    assert "--allow-gpu-metrics=true" in args
    assert not any(a.startswith("--allow-http=false") for a in args)
    assert "OMPI_MCA_btl_vader_single_copy_mechanism" not in json.dumps(triton(d)["env"])


@pytest.mark.parametrize("backend", ["python", "onnxruntime", "vllm", "pytorch"])
def test_non_tensorrtllm_backends_keep_auto_complete_config(backend: str) -> None:
    # ONNX Runtime, PyTorch and Python models are often shipped without a full
    # config.pbtxt and rely on Triton completing it.
    args = argv(render_deployment(make_md(model={"backend": backend}), replicas=1))
    assert "--disable-auto-complete-config" not in args
    assert not any("shm-region-prefix-name" in a for a in args)


def test_tensorrtllm_on_one_gpu_needs_no_mpirun() -> None:
    md = make_md(model={"backend": "tensorrtllm"}, gpu={"tensorParallelism": 1})
    args = argv(render_deployment(md, replicas=1))
    assert args[0] == "tritonserver"
    assert "--disable-auto-complete-config" in args


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2), (4, 2), (8, 1)])
def test_multi_gpu_tensorrtllm_runs_one_rank_per_gpu_under_mpirun(tp: int, pp: int) -> None:
    md = make_md(gpu={"tensorParallelism": tp, "pipelineParallelism": pp})
    d = render_deployment(md, replicas=1)
    assert triton(d)["command"] == ["mpirun"]
    assert "--allow-run-as-root" in triton(d)["args"]
    per_rank = ranks(d)
    assert len(per_rank) == tp * pp
    assert all(r[0] == "tritonserver" for r in per_rank)
    assert triton(d)["args"].count("-n") == tp * pp


def test_4x2_tensorrtllm_has_8_ranks_and_only_rank_0_serves() -> None:
    md = make_md(gpu={"tensorParallelism": 4, "pipelineParallelism": 2})
    per_rank = ranks(render_deployment(md, replicas=1))
    assert len(per_rank) == 8
    leader, workers = per_rank[0], per_rank[1:]
    assert "--http-port=8000" in leader
    assert "--grpc-port=8001" in leader
    assert "--metrics-port=8002" in leader
    assert not any(a.startswith("--allow-") and a.endswith("=false") for a in leader)
    for worker in workers:
        assert "--allow-http=false" in worker
        assert "--allow-grpc=false" in worker
        assert "--allow-metrics=false" in worker
        assert not any(
            a.startswith(("--http-port", "--grpc-port", "--metrics-port")) for a in worker
        )


def test_worker_ranks_load_only_the_tensorrt_llm_model() -> None:
    md = make_md(model={"name": "ensemble"}, gpu={"tensorParallelism": 2})
    leader, worker = ranks(render_deployment(md, replicas=1))
    assert "--load-model=ensemble" in leader
    assert "--model-control-mode=explicit" in worker
    assert [a for a in worker if a.startswith("--load-model=")] == ["--load-model=tensorrt_llm"]


def test_leader_loads_the_whole_repository_when_no_model_is_named() -> None:
    leader, worker = ranks(render_deployment(make_md(gpu={"tensorParallelism": 2}), replicas=1))
    assert not any(a.startswith(("--load-model", "--model-control-mode")) for a in leader)
    assert "--load-model=tensorrt_llm" in worker


def test_ranks_share_the_repository_but_not_python_shared_memory_regions() -> None:
    md = make_md(gpu={"tensorParallelism": 4})
    per_rank = ranks(render_deployment(md, replicas=1))
    prefixes = [a for r in per_rank for a in r if "shm-region-prefix-name" in a]
    assert prefixes == [
        f"--backend-config=python,shm-region-prefix-name=prefix{i}_" for i in range(4)
    ]
    assert all("--model-repository=s3://models/llama" in r for r in per_rank)
    assert all("--disable-auto-complete-config" in r for r in per_rank)


def test_mpi_ranks_can_talk_without_ptrace() -> None:
    d = render_deployment(make_md(gpu={"tensorParallelism": 2}), replicas=1)
    assert {"name": "OMPI_MCA_btl_vader_single_copy_mechanism", "value": "none"} in triton(d)["env"]


def test_user_can_override_the_mpi_default_env() -> None:
    md = make_md(
        gpu={"tensorParallelism": 2},
        runtime={"env": [{"name": "OMPI_MCA_btl_vader_single_copy_mechanism", "value": "cma"}]},
    )
    env = triton(render_deployment(md, replicas=1))["env"]
    assert [e for e in env if e["name"].startswith("OMPI_")] == [
        {"name": "OMPI_MCA_btl_vader_single_copy_mechanism", "value": "cma"}
    ]


def test_multi_gpu_vllm_is_one_process_with_all_gpus() -> None:
    # vLLM spawns its own tensor-parallel workers inside the Triton process.
    md = make_md(model={"backend": "vllm"}, gpu={"tensorParallelism": 4})
    d = render_deployment(md, replicas=1)
    assert triton(d)["command"] == ["tritonserver"]
    assert "mpirun" not in argv(d)
    assert triton(d)["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_named_model_is_loaded_explicitly() -> None:
    args = argv(
        render_deployment(make_md(model={"name": "resnet50", "backend": "onnxruntime"}), replicas=1)
    )
    assert "--model-control-mode=explicit" in args
    assert "--load-model=resnet50" in args


def test_without_model_name_triton_loads_the_whole_repository() -> None:
    args = argv(render_deployment(make_md(model={"backend": "python"}), replicas=1))
    assert not any(a.startswith(("--load-model", "--model-control-mode")) for a in args)


def test_runtime_args_come_last_so_they_override() -> None:
    md = make_md(
        model={"backend": "onnxruntime"}, runtime={"args": ["--log-verbose=1", "--http-port=9000"]}
    )
    assert argv(render_deployment(md, replicas=1))[-2:] == ["--log-verbose=1", "--http-port=9000"]


def test_runtime_args_reach_every_mpi_rank() -> None:
    md = make_md(gpu={"tensorParallelism": 2}, runtime={"args": ["--log-verbose=1"]})
    for rank in ranks(render_deployment(md, replicas=1)):
        assert rank[-1] == "--log-verbose=1"


# --- Issue 11: user strings reach the container literally -------------------------

SECRET_REFERENCE = "$(AWS_SECRET_ACCESS_KEY)"


def container_strings(deployment: dict[str, Any]) -> list[str]:
    """Every command, args and env value of every container: what the kubelet expands."""
    spec = pod(deployment)
    out: list[str] = []
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        out += [*c.get("command", []), *c.get("args", [])]
        out += [e["value"] for e in c.get("env", []) if "value" in e]
    return out


@pytest.mark.parametrize(
    "uri", [f"s3://bucket/{SECRET_REFERENCE}", f"https://host/{SECRET_REFERENCE}.tar"]
)
def test_a_variable_reference_in_the_uri_is_not_expanded(uri: str) -> None:
    # Defect 3: the kubelet substituted the Secret's value into args and env.
    deployment = render_deployment(make_md(model={"uri": uri}), replicas=1)
    expanded = [expand_all(s) for s in container_strings(deployment)]
    assert not [s for s in expanded if "<AWS_SECRET_ACCESS_KEY>" in s]
    assert any(uri in s for s in expanded)  # and the URI arrives as written


@pytest.mark.parametrize("text", ["$(HOME)", "$$(HOME)", "a$b", "$", "$$", "$(", "x$(Y)$(Z)$$"])
def test_args_and_env_values_arrive_exactly_as_written(text: str) -> None:
    md = make_md(
        runtime={"args": [f"--x={text}"], "env": [{"name": "V", "value": text}]},
        gpu={"tensorParallelism": 2},
    )
    deployment = render_deployment(md, replicas=1)
    for rank in ranks(deployment):
        assert expand_all(rank[-1]) == f"--x={text}"
    (value,) = [e["value"] for e in triton(deployment)["env"] if e["name"] == "V"]
    assert expand_all(value) == text


def test_strings_without_references_keep_their_spelling() -> None:
    md = make_md(runtime={"args": ["--price=$5", "plain"]})
    assert argv(render_deployment(md, replicas=1))[-2:] == ["--price=$5", "plain"]


# --- Issue 11: rollouts within the tier's GPUs -------------------------------------


def test_without_room_for_a_surge_pod_rollouts_replace_one_replica_at_a_time() -> None:
    # Defect 10: the renderer hard-coded maxSurge 1 whatever the tier had left.
    deployment = render_deployment(make_md(), replicas=2, surge=False)
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


# --- Issue 11: the largest admissible spec still renders storable children -------


def largest_admissible_spec(tp: int, uri_chars: int, env: str) -> ModelDeployment:
    """Every field that grows the Deployment at its admission limit, with the
    characters that cost the most bytes in JSON (control characters: \\u0001)."""
    per_rank = mdapi.MAX_COMMAND_LINE_CHARS // tp
    uri = "https://h/" + "é" * (uri_chars - 10)
    args, left = [], per_rank - len(uri)
    while left > 0 and len(args) < mdapi.MAX_ARGS:
        args.append("\x01" * min(mdapi.MAX_ARG_CHARS, left))
        left -= len(args[-1])
    if env == "values":
        values = [mdapi.MAX_ENV_VALUE_CHARS] + [0] * 127
        entries = [
            {"name": f"{'E' * 250}{i:03d}", "value": "\x01" * n} for i, n in enumerate(values)
        ]
    else:
        entries = [
            {
                "name": f"{'E' * 250}{i:03d}",
                "secretKeyRef": {"name": f"{'s' * 250}{i:03d}", "key": f"{'k' * 250}{i:03d}"},
            }
            for i in range(128)
        ]
    resources = {f"{'a' * 180}{i}.example.com/{'d' * 60}": "1" for i in range(8)}
    return ModelDeployment.from_k8s(
        {
            "metadata": {"name": "m" * 251 + ".x", "namespace": "n" * 63},
            "spec": {
                "model": {"uri": uri, "name": "N" * 128, "credentials": {"name": "c" * 253}},
                "gpu": {"tensorParallelism": tp, "product": "P" * 63},
                "runtime": {
                    "image": "i" * 512,
                    "args": args,
                    "env": entries,
                    "resources": {"requests": resources, "limits": resources},
                    "shmSize": "9" * 64,
                },
            },
        }
    )


@pytest.mark.parametrize("tp", [1, 2, 64])
@pytest.mark.parametrize("env", ["values", "secrets"])
def test_the_largest_admissible_spec_renders_children_that_can_be_stored(tp: int, env: str) -> None:
    # Defect 7: without admission bounds a spec rendered a 266 MB Deployment.
    md = largest_admissible_spec(tp, mdapi.MAX_URI_CHARS if tp < 64 else 1024, env)
    taints = [{"key": "k" * 316, "operator": "Equal", "value": "v" * 63, "effect": "NoSchedule"}]
    children = desired_children(
        md,
        10_000,
        "0" * 36,
        priority_class="p" * 253,
        node_selector={f"{'k' * 300}{i}": "v" * 63 for i in range(16)},
        tolerations=taints * 16,
    )
    assert too_large(children) is None
    assert max(object_bytes(c) for c in children) <= MAX_CHILD_BYTES


def test_a_child_too_large_to_store_is_a_problem_not_an_apply() -> None:
    deployment = render_deployment(make_md(), replicas=1)
    deployment["metadata"]["annotations"] = {"padding": "x" * MAX_CHILD_BYTES}
    problem = too_large([deployment])
    assert problem is not None and problem.reason == "RenderedTooLarge"
    assert "Deployment" in problem.message
