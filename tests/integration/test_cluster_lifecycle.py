"""`cluster-up` is idempotent and `cluster-down` leaves nothing behind.

Runs a second, throwaway cluster in its own state directory (the build is
shared through the machine-wide cache), so the suite's cluster is untouched.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hack import localcluster

pytestmark = pytest.mark.cluster
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


@pytest.mark.skipif(
    bool(os.environ.get("KUBECONFIG")) and os.environ.get("TURNPIKE_LOCAL_CLUSTER") != "1",
    reason="uses the local cluster's binaries; KUBECONFIG points elsewhere",
)
def test_cluster_up_is_idempotent_and_cluster_down_stops_everything(tmp_path: Path) -> None:
    state_dir = tmp_path / "cluster"
    started = time.monotonic()
    kubeconfig = run(state_dir, "up").stdout.strip()
    first_up = time.monotonic() - started
    status = json.loads(run(state_dir, "status").stdout)
    assert status["running"] is True
    pids: dict[str, int] = status["pids"]
    ports: dict[str, int] = status["ports"]
    assert set(pids) == set(localcluster.COMPONENTS)
    assert all(listening(p) for name, p in ports.items() if name != "etcd_peer")

    started = time.monotonic()
    again = run(state_dir, "up")
    second_up = time.monotonic() - started
    assert again.stdout.strip() == kubeconfig
    assert "reusing the running cluster" in again.stderr
    assert json.loads(run(state_dir, "status").stdout)["pids"] == pids, "second up restarted"
    print(f"\nwarm cluster-up {first_up:.1f}s, reuse {second_up:.1f}s")

    run(state_dir, "down")
    assert not [name for name, pid in pids.items() if localcluster.process_alive(pid)]
    assert not processes_mentioning(state_dir), "a process of the cluster is still running"
    # A port may be taken again at once by an unrelated process on a busy machine;
    # what must not happen is one of the cluster's processes still listening.
    assert not [name for name, port in ports.items() if cluster_listens(port, state_dir)]
    assert not state_dir.exists()
