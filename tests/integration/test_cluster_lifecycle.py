"""`cluster-up` is idempotent and `cluster-down` leaves nothing behind, real node included.

Runs before every other test (``before_all``): one machine runs one real node
(the kubelet's device-plugin socket path is fixed), so this test first stops
this checkout's cluster if one is running, then brings up a throwaway cluster in
its own state directory, runs a real pod on its real node (a network namespace,
a veth, a Secret and an emptyDir volume, an overlay rootfs), takes it down and
checks that no process, listener, mount, network namespace, bridge, veth,
nftables table, cgroup or changed sysctl is left. The suite's own cluster is
then started by the ``cluster`` fixture as usual.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hack import localcluster, realnode
from hack.kubectl import Kubectl, eventually

pytestmark = [pytest.mark.cluster, pytest.mark.before_all]
SCRIPT = Path(localcluster.__file__)


def run(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TURNPIKE_CLUSTER_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def processes_mentioning(path: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(path).encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def cluster_listens(port: int, path: Path) -> bool:
    """Whether a process started for path (or one ss cannot name) listens on port.

    Asks the kernel's socket table rather than connecting: a connect to a port
    nobody listens on can succeed by connecting to itself.
    """
    owners = subprocess.run(
        ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not owners:
        return False
    pids = [int(p) for p in re.findall(r"pid=(\d+)", owners)]
    return not pids or any(pid in processes_mentioning(path) for pid in pids)


def sleeper_pod(image: str, product: str) -> list[dict[str, object]]:
    """A pod on the real node with everything whose teardown could leak."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "lifecycle", "namespace": "default"},
            "stringData": {"token": "not-a-secret"},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "lifecycle", "namespace": "default"},
            "spec": {
                "nodeSelector": {"nvidia.com/gpu.product": product},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "terminationGracePeriodSeconds": 30,
                "containers": [
                    {
                        "name": "sleep",
                        "image": image,
                        "command": ["sleep", "600"],
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        "volumeMounts": [
                            {"name": "secret", "mountPath": "/secret"},
                            {"name": "scratch", "mountPath": "/scratch"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "secret", "secret": {"secretName": "lifecycle"}},
                    {"name": "scratch", "emptyDir": {"medium": "Memory"}},
                ],
            },
        },
    ]


@pytest.mark.skipif(
    bool(os.environ.get("KUBECONFIG")) and os.environ.get("TURNPIKE_LOCAL_CLUSTER") != "1",
    reason="uses the local cluster's binaries; KUBECONFIG points elsewhere",
)
def test_cluster_up_is_idempotent_and_cluster_down_leaves_nothing(
    tmp_path: Path, figure: Callable[[str], None]
) -> None:
    if localcluster.running() is not None or localcluster._read_state():
        localcluster.down()  # the suite's fixture starts it again
    sysctls_before = realnode.read_sysctls()
    tables_before = realnode.nft_tables()
    state_dir = tmp_path / "cluster"
    paths_before = realnode.machine_paths(state_dir)
    try:
        started = time.monotonic()
        kubeconfig = run(state_dir, "up").stdout.strip()
        first_up = time.monotonic() - started
        status = json.loads(run(state_dir, "status").stdout)
        assert status["running"] is True
        pids: dict[str, int] = status["pids"]
        ports: dict[str, int] = status["ports"]
        state = json.loads((state_dir / "state.json").read_text())
        assert set(pids) == set(localcluster.components(state))
        assert {"kubelet", "containerd", "kube-proxy"} <= set(pids)
        serving = {n: p for n, p in ports.items() if n not in ("etcd_peer", "kubelet")}
        assert all(listening(p) for p in serving.values())

        started = time.monotonic()
        again = run(state_dir, "up")
        second_up = time.monotonic() - started
        assert again.stdout.strip() == kubeconfig
        assert "reusing the running cluster" in again.stderr
        assert json.loads(run(state_dir, "status").stdout)["pids"] == pids, "second up restarted"

        kubectl = Kubectl(str(Path(state["bin"]) / "kubectl"), Path(kubeconfig))
        pool = state["real_pool"]
        image = realnode.image_ref(realnode.build_images(), "tritonserver-cpu")
        kubectl.apply(*sleeper_pod(image, pool["product"]))
        eventually(
            "the real pod Running",
            lambda: kubectl.get("pod", "lifecycle", "-n", "default")["status"].get("phase")
            == "Running",
            timeout=120,
        )
        assert realnode.veths_on_bridge(), "a running pod has a veth on the bridge"
        assert realnode.mounts_under([state_dir]), "a running pod has mounts under the state dir"

        started = time.monotonic()
        run(state_dir, "down")
        down_s = time.monotonic() - started
        figure(f"cluster-up from stopped {first_up:.1f}s, reuse {second_up:.1f}s, "
            f"down with a running pod {down_s:.1f}s"
        )
        assert not [name for name, pid in pids.items() if localcluster.process_alive(pid)]
        assert not processes_mentioning(state_dir), "a process of the cluster is still running"
        # A port may be taken again at once by an unrelated process on a busy machine;
        # what must not happen is one of the cluster's processes still listening.
        assert not [name for name, port in ports.items() if cluster_listens(port, state_dir)]
        assert not state_dir.exists()
        assert realnode.residue(state_dir, sysctls_before, tables_before, paths_before) == []
        assert realnode.nft_tables() == tables_before
    finally:
        # A failure above must not leave a real node that the suite's cluster-up
        # would then refuse to share the machine with.
        if state_dir.exists():
            subprocess.run(
                [sys.executable, str(SCRIPT), "down"],
                env={**os.environ, "TURNPIKE_CLUSTER_DIR": str(state_dir)},
                capture_output=True, timeout=300, check=False,
            )
    assert first_up < 60, f"warm cluster-up took {first_up:.1f}s (bound 60 s)"
