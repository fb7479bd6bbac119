"""Turnpike installed the way users install it, and the faults it must recover from.

`helm install` of charts/turnpike with the operator image built from the
repository's Dockerfile: the operator runs as two pods on the real node, with
the chart's ServiceAccount token (in-cluster config, the API server reached
through the `kubernetes` Service), under Pod Security `restricted`, with its
probes, its metrics Service and one leader. The tests then break things the
way production does and measure the recovery; every figure is printed.

These tests need the chart's operator to be the only operator: they run
before any test that starts the suite's own operator process
(``in_cluster_operator``, see tests/conftest.py), and the release is
uninstalled at the end of the module.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hack import chart_operator, loadgen, localcluster, prometheus, realnode
from hack.chart_operator import ChartOperator, image_values, ready
from hack.kubectl import Kubectl, eventually
from hack.modelserver import ModelServer
from tests.conftest import FIGURES
from tests.integration.test_chart import CHART, CLUSTER, RELEASE_NAMESPACE, documented_rbac, tool
from tests.integration.test_rbac import Release, granted
from tests.realpods import node_image, real_md

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.in_cluster_operator,
    pytest.mark.usefixtures("real_node", "crds_installed"),
]
H100 = "NVIDIA-H100-80GB-HBM3"
TRIALS = int(os.environ.get("TURNPIKE_FAULT_TRIALS", "3"))
FLEET = int(os.environ.get("TURNPIKE_FAULT_FLEET", "200"))


@pytest.fixture(scope="module")
def operator_pods(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[ChartOperator]:
    started = time.monotonic()
    op = chart_operator.install(
        kubectl, tool("helm"), node_image("turnpike"), "--set", "operator.resyncSeconds=10"
    )
    op.wait_ready()
    request.config.stash.setdefault(FIGURES, []).append(
        f"helm install: 2 operator pods Ready {time.monotonic() - started:.1f}s after install"
    )
    yield op
    op.uninstall()


def as_release(op: ChartOperator) -> Release:
    return Release(op.release, op.namespace, "")


def kwok_md(name: str) -> dict[str, Any]:
    """A ModelDeployment on the kwok pools: cheap, for counting what the operator does."""
    return {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "s3://faults/model", "backend": "python"},
            "gpu": {"product": H100},
            "replicas": 0,
        },
    }


def time_to_reconcile(kube: Kubectl, name: str, timeout: float = 180) -> float:
    """Create a ModelDeployment now; seconds until the operator has made its Deployment."""
    started = time.monotonic()
    kube.apply(kwok_md(name))
    eventually(
        f"a Deployment for {name}",
        lambda: kube.run("get", "deployment", name, check=False).returncode == 0,
        timeout=timeout,
        interval=0.2,
    )
    return time.monotonic() - started


def kill_container(pod: dict[str, Any], container: str) -> int:
    """SIGKILL a container's main process from the host, as the OOM killer would."""
    status = next(s for s in pod["status"]["containerStatuses"] if s["name"] == container)
    pid = realnode.container_pid(localcluster._read_state(), status["containerID"])
    os.kill(pid, signal.SIGKILL)
    return int(status.get("restartCount", 0))


def children(kube: Kubectl) -> dict[str, dict[str, list[str]]]:
    """{kind: {owner ModelDeployment: [child uid, ...]}} for Turnpike's children."""
    found: dict[str, dict[str, list[str]]] = {}
    for kind in ("deployments", "services", "poddisruptionbudgets"):
        per_owner: dict[str, list[str]] = {}
        for obj in kube.items(kind):
            owners = [
                o["name"] for o in obj["metadata"].get("ownerReferences", [])
                if o.get("kind") == "ModelDeployment"
            ]
            for owner in owners or ["<orphan>"]:
                per_owner.setdefault(owner, []).append(obj["metadata"]["uid"])
        found[kind] = per_owner
    return found


# ---------------------------------------------------------------- installed as users install it


def test_chart_operator_runs_as_restricted_pods_with_one_leader(
    operator_pods: ChartOperator, kubectl: Kubectl
) -> None:
    op = operator_pods
    namespace = kubectl.get("namespace", op.namespace)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = op.wait_ready()
    names = {p["metadata"]["name"] for p in pods}
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("real-")
        assert pod["spec"]["containers"][0]["image"] == op.image
        assert pod["spec"]["serviceAccountName"] == op.fullname
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    leader = eventually("a leader", op.leader, timeout=60)
    assert leader in names
    # The metrics Service selects both pods; EndpointSlices are valid on the real node.
    slices = op.kube.items(
        "endpointslices", "-l", f"kubernetes.io/service-name={op.fullname}-metrics"
    )
    addresses = {a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]}
    assert addresses == {p["status"]["podIP"] for p in pods}
    # Exactly the documented RBAC.
    documented = documented_rbac(lease_name=op.fullname)
    assert granted(kubectl, as_release(op), "default") == documented[CLUSTER]
    assert granted(kubectl, as_release(op), op.namespace) == (
        documented[CLUSTER] | documented[RELEASE_NAMESPACE]
    )


def test_prometheus_scrapes_the_operator_pods(operator_pods: ChartOperator) -> None:
    pods = operator_pods.wait_ready()
    targets = [
        prometheus.ScrapeTarget(f"{p['status']['podIP']}:8080", {"pod": p["metadata"]["name"]})
        for p in pods
    ]
    with prometheus.PrometheusServer(targets, scrape_interval_s=1) as prom:
        up = eventually(
            "both operator pods up in Prometheus",
            lambda: (
                r if len(r := prom.query("up == 1")) == 2 else None
            ),
            timeout=60,
        )
        assert {s["metric"]["pod"] for s in up} == {p["metadata"]["name"] for p in pods}
        leaders = eventually(
            "the operator's own metrics",
            lambda: prom.query("turnpike_leader == 1") or None,
            timeout=60,
        )
        # Exactly one replica leads, and it is the Lease's holder.
        assert [s["metric"]["pod"] for s in leaders] == [operator_pods.leader()]


def test_in_cluster_operator_scales_real_pods_up_and_down_without_failed_requests(
    operator_pods: ChartOperator, kube: Kubectl, request: pytest.FixtureRequest,
    figure: Callable[[str], None],
) -> None:
    # Every new replica fetches the model at start: the server outlives the test's load.
    server = ModelServer().start()
    request.addfinalizer(server.stop)
    kube.apply(
        real_md(
            "sleepy-auto",
            server.tarball_url,
            minReplicas=1,
            maxReplicas=3,
            autoscaling={
                "enabled": True,
                "target": 3,
                "scrapeIntervalSeconds": 1,
                "panicWindowSeconds": 2,
                "stabilizationWindowSeconds": 10,
                "scaleDownPeriodSeconds": 5,
            },
        )
    )
    kube.run("wait", "--for=condition=Ready", "--timeout=180s", "md/sleepy-auto", timeout=190)
    ip = kube.get("service", "sleepy-auto")["spec"]["clusterIP"]

    def scaled(direction: str) -> dict[str, Any] | None:
        last = kube.get("md", "sleepy-auto")["status"].get("lastScale") or {}
        if not last:
            return None
        up = last["toReplicas"] > last["fromReplicas"]
        return last if up == (direction == "up") else None

    with loadgen.background(
        [f"{ip}:8000"], [(60, 16), (120, 1)], max_requests=50_000, keepalive=False
    ) as load:
        up = eventually("a scale-up", lambda: scaled("up"), timeout=60, interval=0.5)
        # Keep the heavy phase on until the new replica serves, then drop to one client.
        eventually("two replicas ready",
                   lambda: kube.get("md", "sleepy-auto")["status"].get("readyReplicas", 0) >= 2,
                   timeout=90)
        down = eventually("a scale-down", lambda: scaled("down"), timeout=150, interval=0.5)
        load.stop()
    result = load.result()
    figure(f"in-cluster operator: {up['reason']!r} then {down['reason']!r}; "
        f"{result.sent} requests, {result.failed} failed"
    )
    assert "queue" in up["reason"] and "queue" in down["reason"]
    assert result.failed == 0, [p.errors for p in result.phases]


# ---------------------------------------------------------------- faults


def test_leader_killed_with_sigkill_recovers(
    operator_pods: ChartOperator, kube: Kubectl,
    figure: Callable[[str], None],
) -> None:
    op = operator_pods
    op.wait_ready()
    leader = eventually("a leader", op.leader, timeout=60)
    pod = next(p for p in op.pods() if p["metadata"]["name"] == leader)
    restarts = kill_container(pod, "operator")
    recovery = time_to_reconcile(kube, "after-leader-kill")
    now_leader = eventually("a leader again", op.leader, timeout=60)
    restarted = op.kube.get("pod", leader)["status"]["containerStatuses"][0]["restartCount"]
    how = "the other replica took over" if now_leader != leader else "the kubelet restarted it"
    figure(f"leader SIGKILLed: next reconcile after {recovery:.1f}s ({how}; "
          f"restarts {restarts}→{restarted})")
    assert now_leader != leader or restarted > restarts
    op.wait_ready()


def test_killed_triton_container_restarts_and_the_autoscaler_holds(
    operator_pods: ChartOperator, kube: Kubectl,
    figure: Callable[[str], None],
) -> None:
    from tests.realpods import local_volume

    local_volume(kube, "models")
    kube.apply(
        real_md(
            "sleepy-kill",
            "pvc://models",
            minReplicas=1,
            maxReplicas=2,
            autoscaling={"enabled": True, "target": 4, "scrapeIntervalSeconds": 1,
                         "stabilizationWindowSeconds": 15, "scaleDownPeriodSeconds": 0},
        )
    )
    kube.run("wait", "--for=condition=Ready", "--timeout=180s", "md/sleepy-kill", timeout=190)
    ip = kube.get("service", "sleepy-kill")["spec"]["clusterIP"]
    # 12 clients need both replicas (queue 6 per replica against a target of 4).
    with loadgen.background([f"{ip}:8000"], [(240, 12)], keepalive=False) as load:
        eventually(
            "two ready replicas under load",
            lambda: kube.get("md", "sleepy-kill")["status"].get("readyReplicas", 0) == 2,
            timeout=120,
            interval=0.5,
        )
        pod = next(p for p in kube.items("pods", "-l", "turnpike.dev/model-deployment=sleepy-kill")
                   if ready(p))
        restarts = kill_container(pod, "triton")
        desired_seen: list[int] = []
        ready_seen: list[int] = []

        def restarted() -> bool:
            status = kube.get("md", "sleepy-kill")["status"]
            desired_seen.append(int(status.get("desiredReplicas", 0)))
            ready_seen.append(int(status.get("readyReplicas", 0)))
            again = kube.get("pod", pod["metadata"]["name"])
            count = again["status"]["containerStatuses"][0]["restartCount"]
            return count > restarts and ready(again) and ready_seen[-1] == 2

        eventually("the container restarted and ready again", restarted, timeout=120, interval=0.5)
        load.stop()
    figure(f"Triton container SIGKILLed: ready replicas seen {sorted(set(ready_seen))}, "
          f"desired seen {sorted(set(desired_seen))}; load {load.result().failed} failed "
          f"of {load.result().sent}")
    assert 1 in ready_seen, "status never showed the replica not ready"
    assert min(desired_seen) == 2, "the autoscaler scaled down on the missing sample"


def test_evicted_triton_pod_under_load_fails_no_request(
    operator_pods: ChartOperator, kube: Kubectl,
    figure: Callable[[str], None],
) -> None:
    from tests.realpods import local_volume

    local_volume(kube, "models")
    kube.apply(real_md("sleepy-evict", "pvc://models", replicas=2))
    kube.run("wait", "--for=condition=Ready", "--timeout=180s", "md/sleepy-evict", timeout=190)
    ip = kube.get("service", "sleepy-evict")["spec"]["clusterIP"]
    pods = kube.items("pods", "-l", "turnpike.dev/model-deployment=sleepy-evict")
    victim, other = pods[0]["metadata"]["name"], pods[1]["metadata"]["name"]

    def evict(name: str) -> subprocess.CompletedProcess[str]:
        body = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": name, "namespace": kube.namespace}}
        return kube.run("create", "--raw",
                        f"/api/v1/namespaces/{kube.namespace}/pods/{name}/eviction",
                        "-f", "-", stdin=json.dumps(body), check=False)

    eventually(
        "the PodDisruptionBudget allowing one disruption",
        lambda: kube.get("pdb", "sleepy-evict").get("status", {}).get("disruptionsAllowed") == 1,
        timeout=60,
    )
    with loadgen.background([f"{ip}:8000"], [(240, 4)], keepalive=False) as load:
        eventually("load flowing", lambda: load.sent() > 20, timeout=30)
        assert evict(victim).returncode == 0
        refused = evict(other)
        # The PDB allows one replica down at a time.
        assert refused.returncode != 0 and "disruption budget" in refused.stderr, refused.stderr

        def replaced() -> bool:
            now = kube.items("pods", "-l", "turnpike.dev/model-deployment=sleepy-evict")
            names = {p["metadata"]["name"] for p in now}
            return victim not in names and sum(ready(p) for p in now) == 2

        eventually("the evicted pod replaced", replaced, timeout=150, interval=1)
        load.stop()
    result = load.result()
    figure(f"Triton pod evicted under load: {result.sent} requests, {result.failed} failed")
    assert result.failed == 0, [p.errors for p in result.phases]


def test_operator_killed_at_random_points_while_a_fleet_is_created(
    operator_pods: ChartOperator, kubectl: Kubectl,
    figure: Callable[[str], None],
) -> None:
    op = operator_pods
    rng = random.Random(int(os.environ.get("TURNPIKE_FAULT_SEED", "20261202")))
    figures = []
    for trial in range(TRIALS):
        op.wait_ready()
        namespace = f"t-fleet-{trial}-{uuid.uuid4().hex[:5]}"
        kubectl.run("create", "namespace", namespace)
        kube = kubectl.in_namespace(namespace)
        names = [f"m-{i:03d}" for i in range(FLEET)]
        started = time.monotonic()
        # Created while the kills happen.
        created = subprocess.Popen(
            [kube.binary, f"--kubeconfig={kube.kubeconfig}", f"--namespace={namespace}",
             "create", "-f", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert created.stdin is not None
        created.stdin.write(json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [kwok_md(n) for n in names]}
        ))
        created.stdin.close()
        kills = 0
        for at in sorted(rng.uniform(0.5, 12) for _ in range(2)):
            while time.monotonic() - started < at:
                time.sleep(0.05)
            leader = op.leader()
            pod = next((p for p in op.pods() if p["metadata"]["name"] == leader), None)
            if pod is not None and pod["status"].get("containerStatuses"):
                try:
                    kill_container(pod, "operator")
                    kills += 1
                except (ProcessLookupError, RuntimeError, StopIteration):
                    pass  # between restarts: nothing to kill at this instant
        assert created.wait(timeout=120) == 0, created.stderr.read() if created.stderr else ""

        def converged(kube: Kubectl = kube) -> dict[str, dict[str, list[str]]] | None:
            found = children(kube)
            mds = kube.items("md")
            if len(mds) != FLEET or any(
                m.get("status", {}).get("observedGeneration") != m["metadata"]["generation"]
                for m in mds
            ):
                return None
            return found if all(len(found[k]) == FLEET for k in found) else None

        found = eventually(f"{FLEET} ModelDeployments converged", converged, timeout=300,
                           interval=2)
        took = time.monotonic() - started
        for kind, per_owner in found.items():
            assert "<orphan>" not in per_owner
            assert sorted(per_owner) == names
            duplicated = {o: u for o, u in per_owner.items() if len(u) != 1}
            assert not duplicated, f"{kind} duplicated: {duplicated}"
        figures.append((kills, took))
        # The next trial starts on a quiet cluster: its fleet and children gone.
        kubectl.run("delete", "namespace", namespace, "--timeout=180s", timeout=200)
    figure(f"{TRIALS} trials of {FLEET} ModelDeployments with the leader SIGKILLed at random: "
          + "; ".join(f"{k} kills, converged in {t:.0f}s" for k, t in figures))


def relabelled(label: str) -> str:
    """The operator image rebuilt with one more label (a new image ID), imported into the node."""
    state = localcluster._read_state()
    images = realnode.node_images(state)
    image = realnode.image_ref(images, "turnpike")
    archive = next(i["archive"] for i in images if i["name"] == image)
    new = f"{image}-{label}"
    with tempfile.TemporaryDirectory(prefix="relabel-") as tmp:
        storage = ["--root", f"{tmp}/root", "--runroot", f"{tmp}/run", "--storage-driver", "vfs"]

        def buildah(*args: str) -> str:
            result = subprocess.run(["buildah", *storage, *args], capture_output=True, text=True,
                                    timeout=300, check=False)
            assert result.returncode == 0, result.stderr
            return result.stdout.strip()

        container = buildah("from", "--pull=never", f"docker-archive:{archive}")
        buildah("config", "--label", f"turnpike.dev/rebuild={label}", container)
        buildah("commit", container, new)
        out = f"{tmp}/image.tar"
        buildah("push", new, f"docker-archive:{out}:{new}")
        subprocess.run([*realnode.ctr(state), "images", "import", out], check=True,
                       capture_output=True, timeout=300)
    return new


def test_helm_upgrade_to_a_new_image_under_load_restarts_no_triton(
    operator_pods: ChartOperator, kube: Kubectl,
    figure: Callable[[str], None],
) -> None:
    from tests.realpods import local_volume

    op = operator_pods
    local_volume(kube, "models")
    kube.apply(real_md("sleepy-upgrade", "pvc://models", replicas=2))
    kube.run("wait", "--for=condition=Ready", "--timeout=180s", "md/sleepy-upgrade", timeout=190)
    selector = "turnpike.dev/model-deployment=sleepy-upgrade"
    before = {p["metadata"]["uid"]: p["status"]["containerStatuses"][0]["restartCount"]
              for p in kube.items("pods", "-l", selector)}
    new_image = relabelled(uuid.uuid4().hex[:6])
    old_pods = {p["metadata"]["name"] for p in op.pods()}
    ip = kube.get("service", "sleepy-upgrade")["spec"]["clusterIP"]
    with loadgen.background([f"{ip}:8000"], [(300, 4)], keepalive=False) as load:
        eventually("load flowing", lambda: load.sent() > 20, timeout=30)
        started = time.monotonic()
        op.helm("upgrade", op.release, str(CHART), "--namespace", op.namespace,
                "--reuse-values", *image_values(new_image))

        def rolled() -> bool:
            pods = op.pods()
            return (len(pods) == 2 and all(ready(p) for p in pods)
                    and not ({p["metadata"]["name"] for p in pods} & old_pods)
                    and all(p["spec"]["containers"][0]["image"] == new_image for p in pods))

        eventually("the operator rolled to the new image", rolled, timeout=240, interval=1)
        took = time.monotonic() - started
        # The new leader reconciles the running fleet once more under load.
        time_to_reconcile(kube, "after-upgrade")
        load.stop()
    result = load.result()
    after = {p["metadata"]["uid"]: p["status"]["containerStatuses"][0]["restartCount"]
             for p in kube.items("pods", "-l", selector)}
    figure(f"helm upgrade to {new_image}: operator rolled in {took:.0f}s; Triton pods "
          f"unchanged {after == before}; {result.sent} requests, {result.failed} failed")
    assert after == before, "a serving Triton pod was replaced or restarted"
    assert result.failed == 0, [p.errors for p in result.phases]


def admitted(kube: Kubectl, name: str) -> bool:
    """Whether the API server admits a new ModelDeployment now (server-side dry run)."""
    body = json.dumps(kwok_md(name))
    return kube.run("create", "--dry-run=server", "-f", "-", stdin=body, check=False,
                    timeout=15).returncode == 0


def test_api_server_outage_of_30s_is_survived_without_duplicates_or_deletions(
    operator_pods: ChartOperator, kube: Kubectl,
    figure: Callable[[str], None],
) -> None:
    """Last in the module: the API server's restart also disturbs admission (below)."""
    for n in range(3):
        kube.apply(kwok_md(f"before-{n}"))
    eventually(
        "children of the three ModelDeployments",
        lambda: all(len(children(kube)[k]) >= 3 for k in ("deployments", "services")),
        timeout=90,
    )
    before = children(kube)
    outage_began = time.monotonic()
    localcluster.stop_component("kube-apiserver")
    try:
        # The outage itself: 30 s with no API server, as the issue asks.
        time.sleep(30)
    finally:
        localcluster.start_component("kube-apiserver")
    eventually(
        "the API server back",
        lambda: kube.run("get", "--raw=/readyz", check=False, timeout=10).returncode == 0,
        timeout=120,
        interval=0.5,
    )
    back = time.monotonic() - outage_began
    # Reconciles resumed: a child deleted now is repaired by the operator.
    restarted_at = time.monotonic()
    kube.run("delete", "deployment", "before-0", "--wait=false")
    eventually(
        "before-0's Deployment recreated",
        lambda: (lambda d: d and d["metadata"]["uid"] not in before["deployments"]["before-0"])(
            next(iter(kube.items("deployments", "--field-selector",
                                 "metadata.name=before-0")), None)
        ),
        timeout=240,
        interval=0.5,
    )
    recovery = time.monotonic() - restarted_at
    after = children(kube)
    restarts = [p["status"]["containerStatuses"][0]["restartCount"]
                for p in operator_pods.pods()]
    for kind in before:
        for owner, uids in before[kind].items():
            if kind == "deployments" and owner == "before-0":
                assert len(after[kind][owner]) == 1, after[kind][owner]
                continue
            assert after[kind][owner] == uids, f"{kind} of {owner} changed: {uids} → {after[kind]}"
        assert "<orphan>" not in after[kind]
    # A ValidatingAdmissionPolicy whose paramKind is a CRD (the tier namespace
    # policy) fails closed after an API server restart until the server's
    # discovery catches up (kubernetes/kubernetes#124237, #122658; not fixed in
    # 1.36): measure how long ModelDeployments cannot be created.
    refused_since = time.monotonic()
    eventually("ModelDeployments admitted again", lambda: admitted(kube, "probe"),
               timeout=360, interval=2)
    refused_s = time.monotonic() - refused_since
    admission = (
        "new ModelDeployments admitted at once"
        if refused_s < 1
        else f"new ModelDeployments refused by the tier policy for {refused_s:.0f}s more"
    )
    figure(f"API server down 30 s (back after {back:.1f}s): a deleted child repaired "
           f"{recovery:.1f}s later; operator restarts {restarts}; {admission}")
    operator_pods.wait_ready()

