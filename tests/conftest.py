"""Shared fixtures: the cluster (local or the user's KUBECONFIG) and a namespace per test."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hack import localcluster, lws, netrule, realnode
from hack.kubectl import Kubectl
from hack.operator_process import OperatorProcess, start_operator

os.environ.setdefault("NO_PROXY", netrule.no_proxy())
os.environ.setdefault("no_proxy", netrule.no_proxy())


@pytest.fixture(scope="session")
def cluster() -> Iterator[localcluster.Cluster]:
    """Bring the local cluster up, or reuse one (``make cluster-up``, KUBECONFIG).

    A cluster this session started is stopped at the end unless
    TURNPIKE_KEEP_CLUSTER=1; one that was already running is left alone.
    """
    was_running = localcluster.running() is not None
    cluster = localcluster.ensure()
    yield cluster
    started_here = cluster.bin_dir is not None and not was_running
    if started_here and os.environ.get("TURNPIKE_KEEP_CLUSTER") != "1":
        localcluster.down()


@pytest.fixture(scope="session")
def real_node(cluster: localcluster.Cluster) -> str:
    """The local cluster's real node (kubelet, containerd); skips on a user's KUBECONFIG,
    where the real node and the locally built images do not exist."""
    pools = realnode.real_pools(localcluster.load_shape())
    if cluster.bin_dir is None or not pools:
        pytest.skip("needs the local cluster's real node (KUBECONFIG points elsewhere)")
    return pools[0].node_name


@pytest.fixture(scope="session")
def kubectl(cluster: localcluster.Cluster) -> Kubectl:
    return Kubectl(cluster.kubectl(), cluster.kubeconfig)


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    stem = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:5]}"
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kube(kubectl: Kubectl, namespace: str) -> Kubectl:
    """kubectl bound to the test's namespace."""
    return kubectl.in_namespace(namespace)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``before_all`` tests run first (they stop and start clusters of their own);
    ``in_cluster_operator`` tests next, before any test starts the suite's operator
    process (the chart's operator pods must be the only operator); ``after_all``
    tests look at what the whole suite left behind: they run last."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("before_all") is not None:
            return 0
        if item.get_closest_marker("in_cluster_operator") is not None:
            return 1
        return 3 if item.get_closest_marker("after_all") is not None else 2

    items.sort(key=rank)


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def crds_installed(kubectl: Kubectl) -> None:
    """Turnpike's CRDs, and LeaderWorkerSet's: the operator watches LeaderWorkerSets
    only where their API exists when it starts (the controller comes later, see
    lws_controller)."""
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl.apply(lws.crd())
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    kubectl.run(
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "deploy" / "admission")
    )


@pytest.fixture(scope="session")
def operator(
    cluster: localcluster.Cluster, crds_installed: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator, with a short resync so drift repair is observable in tests."""
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    process = start_operator(cluster.kubeconfig, log_path, "--resync-seconds=2")
    yield process
    code = process.stop()
    assert code == 0, f"operator exited {code} on SIGTERM:\n{process.log_tail()}"


@pytest.fixture(scope="session")
def lws_controller(kubectl: Kubectl, crds_installed: None) -> Iterator[lws.Controller]:
    """The real LeaderWorkerSet controller (sigs.k8s.io/lws), built once per machine."""
    running = lws.start(kubectl)
    yield running
    running.stop()


FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a measured figure (recovery time, failed requests...): printed in the
    run's summary, so CI logs show what the fault suite and the real node measured."""

    def record(text: str) -> None:
        request.config.stash.setdefault(FIGURES, []).append(f"{request.node.name}: {text}")

    return record


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("figures measured by the suite")
        for line in lines:
            terminalreporter.write_line(line)

