"""The real operator on the local cluster, driven the way users drive it: kubectl."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.kubectl import Kubectl, eventually
from hack.localcluster import Cluster
from hack.operator_process import OperatorProcess, start_operator

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator")]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
H100 = "NVIDIA-H100-80GB-HBM3"


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def small_md(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        # A kwok pool's product: these pods are scheduled, never started.
        "spec": {
            "model": {"uri": "s3://models/tiny", "backend": "python"},
            "gpu": {"product": H100},
            **spec,
        },
    }
    return body


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return dict(c)
    return None


def wait_ready(kube: Kubectl, name: str, timeout: int = 90) -> dict[str, Any]:
    kube.run(
        "wait", "--for=condition=Ready", f"--timeout={timeout}s", f"md/{name}", timeout=timeout + 10
    )
    md: dict[str, Any] = kube.get("md", name)
    return md


def test_example_becomes_a_ready_triton_fleet_on_the_right_gpus(kube: Kubectl) -> None:
    md = example("llama-3-8b-trtllm.yaml")
    kube.run("apply", "-f", str(EXAMPLES / "llama-3-8b-trtllm.yaml"))
    name = md["metadata"]["name"]

    ready = wait_ready(kube, name)
    assert ready["status"]["observedGeneration"] == ready["metadata"]["generation"]
    assert condition(ready, "Ready")["observedGeneration"] == ready["metadata"]["generation"]  # type: ignore[index]
    assert ready["status"]["readyReplicas"] == 2

    deployment = kube.get("deployment", name)
    pod_spec = deployment["spec"]["template"]["spec"]
    triton = pod_spec["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec["tolerations"])
    assert {"containerPort": 8002, "name": "metrics", "protocol": "TCP"} in triton["ports"]
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ModelDeployment", name, True)

    service = kube.get("service", name)
    assert {p["port"] for p in service["spec"]["ports"]} == {8000, 8001, 8002}
    pdb = kube.get("pdb", name)
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]

    pods = kube.items("pods", "-l", f"turnpike.dev/model-deployment={name}")
    assert len(pods) == 2
    for pod in pods:
        node = kube.get("node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100

    printed = kube.run("get", "md", name).stdout
    assert "True" in printed and name in printed


def test_spec_change_rolls_the_deployment(kube: Kubectl) -> None:
    body = small_md("rolling")
    kube.apply(body)
    before = wait_ready(kube, "rolling")
    template_before = kube.get("deployment", "rolling")["spec"]["template"]

    changed = copy.deepcopy(body)
    changed["spec"]["runtime"] = {"args": ["--log-verbose=1"]}
    kube.apply(changed)
    after = eventually(
        "the new generation Ready",
        lambda: (
            md
            if (md := kube.get("md", "rolling"))["status"].get("observedGeneration")
            == before["metadata"]["generation"] + 1
            and condition(md, "Ready")["status"] == "True"
            else None
        ),
    )  # type: ignore[index]
    template_after = kube.get("deployment", "rolling")["spec"]["template"]
    assert template_after != template_before
    assert "--log-verbose=1" in json.dumps(template_after["spec"]["containers"][0])
    assert after["status"]["readyReplicas"] == 1


def test_hand_edit_of_a_child_is_repaired(kube: Kubectl) -> None:
    kube.apply(small_md("drift"))
    wait_ready(kube, "drift")
    image = kube.get("deployment", "drift")["spec"]["template"]["spec"]["containers"][0]["image"]
    kube.run("set", "image", "deployment/drift", "triton=example.invalid/hacked:1")
    eventually(
        "the image repaired",
        lambda: (
            kube.get("deployment", "drift")["spec"]["template"]["spec"]["containers"][0]["image"]
            == image
        ),
    )
    kube.run("scale", "deployment/drift", "--replicas=5")
    eventually(
        "the replica count repaired",
        lambda: kube.get("deployment", "drift")["spec"]["replicas"] == 1,
    )
    kube.run("label", "service/drift", "app.kubernetes.io/managed-by-")
    eventually(
        "the removed label restored",
        lambda: (
            kube.get("service", "drift")["metadata"]["labels"].get("app.kubernetes.io/managed-by")
            == "turnpike"
        ),
    )
    uids = {kind: kube.get(kind, "drift")["metadata"]["uid"] for kind in ("service", "pdb")}
    kube.run("delete", "service/drift", "pdb/drift", "--wait=true")
    eventually(
        "the deleted Service and PodDisruptionBudget recreated",
        lambda: all(
            kube.get(kind, "drift")["metadata"]["uid"] != uid for kind, uid in uids.items()
        ),
    )


def test_deleting_a_model_deployment_removes_every_child(kube: Kubectl) -> None:
    kube.apply(small_md("doomed"))
    wait_ready(kube, "doomed")
    kube.run("delete", "md", "doomed", "--wait=true", "--timeout=60s")
    selector = "turnpike.dev/model-deployment=doomed"
    eventually(
        "children collected",
        lambda: (
            not any(
                kube.items(kind, "-l", selector)
                for kind in ("deployments", "replicasets", "pods", "services", "pdb")
            )
        ),
        timeout=60,
    )


def test_kubectl_scale_resizes_the_fleet(kube: Kubectl) -> None:
    kube.apply(small_md("scalable"))
    wait_ready(kube, "scalable")
    kube.run("scale", "md/scalable", "--replicas=3")
    md = eventually(
        "3 ready replicas",
        lambda: (
            m
            if (m := kube.get("md", "scalable"))["status"].get("readyReplicas") == 3
            and condition(m, "Ready")["status"] == "True"
            else None
        ),
    )  # type: ignore[index]
    assert kube.get("deployment", "scalable")["spec"]["replicas"] == 3
    assert md["status"]["selector"]
    scale = json.loads(
        kube.run(
            "get",
            "--raw",
            f"/apis/turnpike.dev/v1alpha1/namespaces/{kube.namespace}/modeldeployments/scalable/scale",
        ).stdout
    )
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"minReplicas": 4, "maxReplicas": 2}, "spec.minReplicas", "must not exceed"),
        ({"gpu": {"count": 3, "tensorParallelism": 2}}, "spec.gpu.count", "tensorParallelism"),
        ({"model": {"uri": "ftp://x/y", "backend": "python"}}, "spec.model.uri", "should match"),
        (
            {"model": {"uri": "s3://x/y", "backend": "tensorflow"}},
            "spec.model.backend",
            "Unsupported value",
        ),
        (
            {"gpu": {"tensorParallelism": 2}, "model": {"uri": "s3://x/y", "backend": "python"}},
            "spec.gpu",
            "tensorrtllm or vllm",
        ),
        ({"autoscaling": {"enabled": True}}, "spec.maxReplicas", "required"),
        ({"replica": 2}, "spec.replica", "field not declared in schema"),
    ],
)
def test_invalid_manifests_are_refused_with_the_field_named(
    kube: Kubectl, patch: dict[str, Any], field: str, words: str
) -> None:
    body = small_md("invalid")
    body["spec"].update(patch)
    result = kube.run("apply", "--server-side", "-f", "-", stdin=json.dumps(body), check=False)
    assert result.returncode != 0, "the API server accepted an invalid ModelDeployment"
    assert field in result.stderr and words in result.stderr, result.stderr


def test_backend_cannot_change_in_place(kube: Kubectl) -> None:
    body = small_md("fixed-backend")
    kube.apply(body)
    body["spec"]["model"]["backend"] = "onnxruntime"
    result = kube.run(
        "apply",
        "--server-side",
        "--field-manager=tests",
        "-f",
        "-",
        stdin=json.dumps(body),
        check=False,
    )
    assert result.returncode != 0
    assert "backend cannot change in place" in result.stderr


def test_missing_secret_degrades_without_crashing(kube: Kubectl, operator: OperatorProcess) -> None:
    body = small_md("needs-secret")
    body["spec"]["model"]["credentials"] = {"name": "absent"}
    kube.apply(body)
    md = eventually(
        "Degraded=True",
        lambda: (
            m
            if (c := condition(m := kube.get("md", "needs-secret"), "Degraded"))
            and c["status"] == "True"
            else None
        ),
    )
    assert condition(md, "Degraded")["reason"] == "SecretNotFound"  # type: ignore[index]
    assert "absent" in condition(md, "Degraded")["message"]  # type: ignore[index]
    kube.run("create", "secret", "generic", "absent", "--from-literal=AWS_ACCESS_KEY_ID=x")
    wait_ready(kube, "needs-secret")
    assert operator.process.poll() is None


def test_a_reconcile_that_changes_nothing_writes_nothing(
    kube: Kubectl, cluster: Cluster, tmp_path: Path
) -> None:
    """A second operator, scoped to this namespace (its own lease), meets an object that
    is already reconciled: pass after pass, it must send no write request at all.

    Measured by the operator's per-request write counter, which every API call goes
    through; the API server's own counters have no namespace label and other tests'
    objects (autoscaled ones persist their window in status) keep them moving.
    """
    kube.apply(small_md("steady", replicas=2))
    wait_ready(kube, "steady")
    eventually("status settled", lambda: kube.get("md", "steady")["status"]["readyReplicas"] == 2)
    second = start_operator(
        cluster.kubeconfig,
        tmp_path / "operator.log",
        f"--namespace={kube.namespace}",
        f"--leader-election-id=zero-writes-{kube.namespace}",
        "--resync-seconds=1",
    )
    try:
        eventually(
            "5 reconciles by the second operator",
            lambda: second.total("turnpike_reconcile_total") >= 5,
            timeout=30,
        )
        writes = {
            k: v
            for k, v in second.metrics().items()
            if k.startswith("turnpike_api_writes_total{") and "resource=leases" not in k
        }
        assert not writes, f"writes from reconciles that change nothing: {writes}"
        errors = [k for k in second.metrics() if "result=error" in k]
        assert not errors
    finally:
        assert second.stop() == 0


def test_examples_apply_idempotently_and_the_operator_owns_no_user_field(
    kube: Kubectl, kubectl: Kubectl
) -> None:
    """GitOps: a second server-side apply of the examples changes nothing, and once the
    operator has reconciled them `kubectl diff` of the user's manifests is empty."""
    files = [p for p in sorted(EXAMPLES.glob("*.yaml")) if p.name != "capacity-tiers.yaml"]
    # The example tiers include a default tier and namespace lists meant for a real
    # cluster; here they are renamed and made non-default so no other test is affected.
    suffix = kube.namespace[-5:] if kube.namespace else "x"
    tiers = []
    for doc in yaml.safe_load_all((EXAMPLES / "capacity-tiers.yaml").read_text()):
        doc["metadata"]["name"] = f"{doc['metadata']['name']}-{suffix}"
        doc["spec"].pop("default", None)
        doc["spec"]["namespaces"] = [kube.namespace]
        tiers.append(doc)
    tiers_file = Path(f"/tmp/tiers-{suffix}.yaml")
    tiers_file.write_text(yaml.safe_dump_all(tiers))
    try:

        def apply_all() -> dict[str, str]:
            """What a GitOps apply owns of each object: its generation and the
            gitops manager's fields (resourceVersion moves with every status write)."""
            versions = {}
            for path in [*files, tiers_file]:
                out = kube.run(
                    "apply",
                    "--server-side",
                    "--field-manager=gitops",
                    "-f",
                    str(path),
                    "-o",
                    "json",
                ).stdout
                for obj in _objects(json.loads(out)):
                    metadata = obj["metadata"]
                    owned = [
                        entry
                        for entry in metadata.get("managedFields") or []
                        if entry.get("manager") == "gitops"
                    ]
                    versions[f"{obj['kind']}/{metadata['name']}"] = json.dumps(
                        [metadata.get("generation"), owned], sort_keys=True
                    )
            return versions

        apply_all()
        for path in files:
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            eventually(
                f"{name} reconciled",
                lambda n=name: kube.get("md", n).get("status", {}).get("observedGeneration") == 1,
            )
        eventually(
            "the tiers reconciled",
            lambda: all(
                kubectl.get("capacitytier", t["metadata"]["name"]).get("status") for t in tiers
            ),
        )
        before = {k: v for k, v in apply_all().items()}
        after = apply_all()
        assert after == before, "a second apply changed objects"
        for path in [*files, tiers_file]:
            diff = kube.run(
                "diff", "--server-side", "--field-manager=gitops", "-f", str(path), check=False
            )
            assert diff.returncode == 0, f"kubectl diff {path.name}:\n{diff.stdout}{diff.stderr}"
    finally:
        kube.run("delete", "md", "--all", "--wait=true", "--timeout=60s", check=False)
        for t in tiers:
            kubectl.run(
                "delete", "capacitytier", t["metadata"]["name"], "--wait=false", check=False
            )
        tiers_file.unlink(missing_ok=True)


def _objects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc.get("items", [doc])) if doc.get("kind", "").endswith("List") else [doc]
