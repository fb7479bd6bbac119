"""The chart installed on the local cluster: RBAC as documented, pods admitted as restricted.

The operator image cannot run here (no registry, no container runtime): kwok plays
the kubelet, so the Deployment's pods are admitted and "run" without the image,
which is what the Pod Security check needs. The RBAC check is on the installed
objects themselves, through `kubectl auth can-i --list` as the ServiceAccount.
CRDs are not installed by these releases (--skip-crds): the shared cluster's CRDs
belong to the other tests.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.chart_operator import RESTRICTED
from hack.kubectl import Kubectl, eventually
from hack.operator_process import start_operator
from tests.integration.test_chart import (
    CHART,
    CLUSTER,
    RELEASE_NAMESPACE,
    Permission,
    documented_rbac,
    run,
    tool,
)

pytestmark = pytest.mark.cluster


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    install_output: str

    @property
    def fullname(self) -> str:
        return f"{self.name}-turnpike"

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"


def helm(kubeconfig: Path, *args: str, check: bool = True) -> str:
    result = run([tool("helm"), f"--kubeconfig={kubeconfig}", *args], check=check, timeout=180)
    return result.stdout + result.stderr


def install(kubectl: Kubectl, *values: str) -> Release:
    suffix = uuid.uuid4().hex[:6]
    release = f"rbac-{suffix}"
    namespace = f"t-rbac-{suffix}"
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": RESTRICTED},
        }
    )
    output = helm(
        kubectl.kubeconfig,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--skip-crds",
        "--set",
        "replicaCount=1",
        # The shared test cluster has the policies from deploy/admission already.
        "--set",
        "admissionPolicies.enabled=false",
        *values,
    )
    return Release(release, namespace, output)


def uninstall(kubectl: Kubectl, release: Release) -> None:
    helm(
        kubectl.kubeconfig, "uninstall", release.name, "--namespace", release.namespace, check=False
    )
    kubectl.run("delete", "namespace", release.namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def release(kubectl: Kubectl) -> Iterator[Release]:
    installed = install(kubectl)
    yield installed
    uninstall(kubectl, installed)


# ---------------------------------------------------------------- can-i


CAN_I_ROW = re.compile(r"^(\S+)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


def split_resource(cell: str) -> tuple[str, str]:
    """'leases.coordination.k8s.io' -> ('coordination.k8s.io', 'leases');
    'modeldeployments.turnpike.dev/status' -> ('turnpike.dev', 'modeldeployments/status')."""
    name, _, subresource = cell.partition("/")
    resource, _, group = name.partition(".")
    return group, resource + (f"/{subresource}" if subresource else "")


def can_i_list(kubectl: Kubectl, user: str, namespace: str) -> set[Permission]:
    """`kubectl auth can-i --list` as permissions (resource rules only)."""
    out = kubectl.run("auth", "can-i", "--list", f"--as={user}", f"--namespace={namespace}").stdout
    permissions: set[Permission] = set()
    for line in out.splitlines()[1:]:
        match = CAN_I_ROW.match(line)
        if match is None:
            continue  # non-resource URLs start with blanks
        group, resource = split_resource(match.group(1))
        names = match.group(3).split() or [""]
        for name in names:
            for verb in match.group(4).split():
                permissions.add((group, resource, name, verb))
    return permissions


def granted(kubectl: Kubectl, release: Release, namespace: str) -> set[Permission]:
    """What the operator's ServiceAccount may do in namespace beyond any ServiceAccount
    of the release namespace (discovery, self reviews: granted to everyone)."""
    nobody = f"system:serviceaccount:{release.namespace}:nobody-{uuid.uuid4().hex[:5]}"
    baseline = can_i_list(kubectl, nobody, namespace)
    assert baseline, "the baseline (an unbound ServiceAccount) should still see self reviews"
    return can_i_list(kubectl, release.service_account, namespace) - baseline


def test_service_account_has_exactly_the_documented_permissions(
    kubectl: Kubectl, release: Release
) -> None:
    documented = documented_rbac(lease_name=release.fullname)
    expected = documented[CLUSTER] | documented[RELEASE_NAMESPACE]
    in_release_namespace = granted(kubectl, release, release.namespace)
    assert in_release_namespace == expected, (
        f"extra: {sorted(in_release_namespace - expected)}"
        f" missing: {sorted(expected - in_release_namespace)}"
    )
    elsewhere = granted(kubectl, release, "default")
    assert elsewhere == documented[CLUSTER], (
        f"extra: {sorted(elsewhere - documented[CLUSTER])}"
        f" missing: {sorted(documented[CLUSTER] - elsewhere)}"
    )


def can_i(kubectl: Kubectl, release: Release, *args: str) -> bool:
    result = kubectl.run("auth", "can-i", *args, f"--as={release.service_account}", check=False)
    return result.stdout.strip() == "yes"


def test_spot_checks(kubectl: Kubectl, release: Release) -> None:
    ns = f"--namespace={release.namespace}"
    assert can_i(kubectl, release, "update", f"leases/{release.fullname}", ns)
    assert not can_i(kubectl, release, "update", "leases/someone-else", ns)
    assert not can_i(kubectl, release, "create", "leases", "--namespace=default")
    assert can_i(kubectl, release, "patch", "deployments.apps", "--namespace=default")
    assert can_i(kubectl, release, "delete", "deployments.apps", "--namespace=default")
    assert not can_i(kubectl, release, "update", "deployments.apps", "--namespace=default")
    assert can_i(kubectl, release, "get", "secrets/hf-token", "--namespace=default")
    assert not can_i(kubectl, release, "list", "secrets", "--namespace=default")
    assert can_i(kubectl, release, "list", "pods", "--namespace=default")
    assert not can_i(kubectl, release, "get", "pods/some-pod", "--namespace=default")
    assert can_i(kubectl, release, "watch", "pods", "--namespace=default")
    assert not can_i(kubectl, release, "delete", "pods", "--namespace=default")
    assert not can_i(kubectl, release, "list", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i(
        kubectl,
        release,
        "patch",
        "modeldeployments.turnpike.dev",
        "--subresource=status",
        "--namespace=default",
    )
    assert not can_i(
        kubectl, release, "patch", "modeldeployments.turnpike.dev", "--namespace=default"
    )
    assert can_i(kubectl, release, "create", "priorityclasses.scheduling.k8s.io")
    assert can_i(kubectl, release, "patch", "capacitytiers.turnpike.dev")
    assert not can_i(kubectl, release, "delete", "capacitytiers.turnpike.dev")
    # Nodes: their GPUs are watched into the cache (Overcommitted), nothing more.
    assert can_i(kubectl, release, "list", "nodes")
    assert can_i(kubectl, release, "watch", "nodes")
    assert not can_i(kubectl, release, "get", "nodes/some-node")
    assert not can_i(kubectl, release, "patch", "nodes")


# ---------------------------------------------------------------- Pod Security


def pods(kubectl: Kubectl, release: Release) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=operator"
    return kubectl.in_namespace(release.namespace).items("pods", "-l", selector)


def test_restricted_namespace_admits_the_operator_pods(kubectl: Kubectl, release: Release) -> None:
    labels = kubectl.get("namespace", release.namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert "violate PodSecurity" not in release.install_output, release.install_output
    running = eventually(
        "the operator pod created by its ReplicaSet",
        lambda: [p for p in pods(kubectl, release) if p["status"].get("phase") == "Running"],
        timeout=90,
    )
    assert len(running) == 1
    kube = kubectl.in_namespace(release.namespace)
    selector = f"app.kubernetes.io/instance={release.name}"
    for replica_set in kube.items("replicasets", "-l", selector):
        failures = [
            c for c in replica_set["status"].get("conditions", []) if c["type"] == "ReplicaFailure"
        ]
        assert not failures, failures


def pod_from_template(kubectl: Kubectl, release: Release) -> dict[str, Any]:
    deployment = kubectl.in_namespace(release.namespace).get("deployment", release.fullname)
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{release.fullname}-dry-run", "labels": {"test": "dry-run"}},
        "spec": template["spec"],
    }


def dry_run(kubectl: Kubectl, namespace: str, pod: dict[str, Any]) -> str:
    result = kubectl.in_namespace(namespace).run(
        "create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False
    )
    return "" if result.returncode == 0 else result.stderr


def test_operator_pod_spec_passes_restricted_and_a_weakened_one_does_not(
    kubectl: Kubectl, release: Release
) -> None:
    """Server dry-run of a bare Pod: enforcement, not just the Deployment's warnings."""
    pod = pod_from_template(kubectl, release)
    assert dry_run(kubectl, release.namespace, pod) == ""
    weakened = json.loads(json.dumps(pod))
    container = weakened["spec"]["containers"][0]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    del container["securityContext"]["capabilities"]
    error = dry_run(kubectl, release.namespace, weakened)
    assert "violates PodSecurity" in error and "restricted" in error, error


# ---------------------------------------------------------------- releases side by side


def test_two_releases_coexist_and_uninstall_cleans_up(kubectl: Kubectl, release: Release) -> None:
    second = install(kubectl, "--set", "replicaCount=0")
    try:
        names = {
            r["metadata"]["name"]
            for r in kubectl.items("clusterroles", "-l", "app.kubernetes.io/name=turnpike")
        }
        assert {release.fullname, second.fullname} <= names
        assert f"{second.fullname}-edit" in names and f"{second.fullname}-view" in names
    finally:
        uninstall(kubectl, second)
    for kind in ("clusterroles", "clusterrolebindings"):
        left = kubectl.items(kind, "-l", f"app.kubernetes.io/instance={second.name}")
        assert not left, f"{kind} left by helm uninstall: {[o['metadata']['name'] for o in left]}"
    assert kubectl.get("clusterrole", release.fullname)["metadata"]["name"] == release.fullname


# ---------------------------------------------------------------- the operator under this RBAC


def service_account_kubeconfig(kubectl: Kubectl, release: Release, path: Path) -> Path:
    """A kubeconfig that authenticates as the release's ServiceAccount (a bound token)."""
    admin = yaml.safe_load(kubectl.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    token = (
        kubectl.in_namespace(release.namespace)
        .run("create", "token", release.fullname, "--duration=30m")
        .stdout.strip()
    )
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": cluster}],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {"name": "operator", "context": {"cluster": "local", "user": "operator"}}
                ],
                "current-context": "operator",
            }
        )
    )
    path.chmod(0o600)
    return path


def test_operator_runs_with_nothing_but_the_chart_rbac(
    kubectl: Kubectl, release: Release, crds_installed: None, tmp_path: Path
) -> None:
    """`turnpike run` with the chart's own flags, authenticated as the chart's ServiceAccount:
    it takes the lease, watches, reconciles a model to Ready and releases the lease, with no
    request refused. It watches only the model's namespace, so it never acts on other tests'
    objects (the chart's RBAC is the same either way)."""
    model_namespace = f"t-rbac-models-{uuid.uuid4().hex[:5]}"
    kubectl.run("create", "namespace", model_namespace)
    deployment = kubectl.in_namespace(release.namespace).get("deployment", release.fullname)
    args = [
        a
        for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        if not a.startswith(("--metrics-bind-address", "--log-format"))
    ]
    kubeconfig = service_account_kubeconfig(kubectl, release, tmp_path / "kubeconfig")
    try:
        operator = start_operator(
            kubeconfig, tmp_path / "operator.log", *args, f"--namespace={model_namespace}"
        )
    except BaseException:
        kubectl.run("delete", "namespace", model_namespace, "--wait=false", check=False)
        raise
    try:
        lease = kubectl.in_namespace(release.namespace).get("lease", release.fullname)
        assert lease["spec"]["holderIdentity"]
        kube = kubectl.in_namespace(model_namespace)
        kube.apply(
            {
                "apiVersion": "turnpike.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "rbac-probe"},
                # Autoscaled (the autoscaler lists pods) with two replicas (a PDB too).
                "spec": {
                    "model": {"uri": "s3://models/tiny", "backend": "python"},
                    "minReplicas": 2,
                    "maxReplicas": 3,
                    "autoscaling": {"enabled": True, "target": 4},
                },
            }
        )
        kube.run("wait", "--for=condition=Ready", "--timeout=90s", "md/rbac-probe", timeout=100)
        eventually(
            "a reconcile by this operator", lambda: operator.total("turnpike_reconcile_total") >= 1
        )
        eventually(
            "an autoscaling tick (pods listed)",
            lambda: operator.total("turnpike_scaling_decisions_total") >= 1,
        )
        samples = operator.metrics()
        errors = sum(
            v
            for k, v in samples.items()
            if k.startswith("turnpike_reconcile_total{") and "result=error" in k
        )
        assert errors == 0, operator.log_tail()
    finally:
        code = operator.stop()
        kubectl.run("delete", "namespace", model_namespace, "--wait=false", check=False)
    log = operator.log_path.read_text(errors="replace")
    assert code == 0, operator.log_tail()
    assert "Forbidden" not in log and " 403" not in log, operator.log_tail(80)
    released = kubectl.in_namespace(release.namespace).get("lease", release.fullname)
    assert not released["spec"].get("holderIdentity"), "the lease was not released on SIGTERM"


def test_helm_upgrade_with_changed_values_keeps_models_serving(
    kubectl: Kubectl, release: Release, operator: object
) -> None:
    """Upgrading the operator (new values, new pod template) leaves running models alone:
    their Deployments and pods are the same objects afterwards and they stay Ready."""
    namespace = f"t-upgrade-{uuid.uuid4().hex[:5]}"
    kubectl.run("create", "namespace", namespace)
    kube = kubectl.in_namespace(namespace)
    try:
        kube.apply(
            {
                "apiVersion": "turnpike.dev/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "serving"},
                "spec": {"model": {"uri": "s3://models/tiny", "backend": "python"}, "replicas": 2},
            }
        )
        kube.run("wait", "--for=condition=Ready", "--timeout=90s", "md/serving", timeout=100)
        before = kube.get("deployment", "serving")
        pods_before = {p["metadata"]["uid"] for p in kube.items("pods")}
        operator_before = kubectl.in_namespace(release.namespace).get(
            "deployment", release.fullname
        )

        helm(
            kubectl.kubeconfig,
            "upgrade",
            release.name,
            str(CHART),
            "--namespace",
            release.namespace,
            "--reuse-values",
            "--set",
            "operator.logLevel=debug",
            "--set",
            "operator.workers=4",
            "--wait=false",
        )

        operator_after = kubectl.in_namespace(release.namespace).get("deployment", release.fullname)
        assert (
            operator_after["metadata"]["generation"] > operator_before["metadata"]["generation"]
        ), "the upgrade did not change the operator's Deployment"
        assert (
            "--log-level=debug"
            in operator_after["spec"]["template"]["spec"]["containers"][0]["args"]
        )
        after = kube.get("deployment", "serving")
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert {p["metadata"]["uid"] for p in kube.items("pods")} == pods_before
        ready = kube.get("md", "serving")
        assert any(
            c["type"] == "Ready" and c["status"] == "True" for c in ready["status"]["conditions"]
        )
    finally:
        kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)
