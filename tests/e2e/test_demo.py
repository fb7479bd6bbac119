"""The demo's path, shortened: real Triton pods on the real node, scaled by queue depth.

Runs before the rest of the suite (``before_all``) in a cluster of its own, so
the suite's operator never manages the demo's objects: one machine runs one
real node, so this checkout's cluster is stopped first if it is running (the
``cluster`` fixture starts it again afterwards).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hack import localcluster

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.cluster
@pytest.mark.before_all
@pytest.mark.skipif(
    bool(os.environ.get("KUBECONFIG")) and os.environ.get("TURNPIKE_LOCAL_CLUSTER") != "1",
    reason="the demo runs on the local cluster's real node",
)
def test_quick_demo_scales_up_and_down_on_real_triton_queues(tmp_path: Path) -> None:
    if localcluster.running() is not None or localcluster._read_state():
        localcluster.down()
    env = {**os.environ, "TURNPIKE_CLUSTER_DIR": str(tmp_path / "cluster")}
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "hack" / "demo.py"), "--quick", f"--out={tmp_path}"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=env,
        )
    finally:
        # A demo killed by the timeout cannot stop its own cluster: the real node
        # would then block the suite's.
        if (tmp_path / "cluster").exists():
            subprocess.run([sys.executable, str(REPO / "hack" / "localcluster.py"), "down"],
                           env=env, capture_output=True, timeout=300, check=False)
    output = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, output
    summary = json.loads((tmp_path / "demo-summary.json").read_text())
    ups = [d for d in summary["decisions"] if d["reason"] == "ScaledUp"]
    downs = [d for d in summary["decisions"] if d["reason"] == "ScaledDown"]
    assert ups and downs, output
    # Decisions came from Triton's queue, not from anything else.
    assert all("queue" in d["message"] for d in ups + downs)
    assert summary["max_queue_per_replica"] > 4
    assert summary["max_desired"] > 1
    png = Path(summary["png"])
    assert png.stat().st_size > 10_000
    assert sum(p["ok"] for p in summary["load"]) > 100
    # Through the Service, across scale-ups and scale-downs of real pods.
    assert sum(p["failed"] for p in summary["load"]) == 0, summary["load"]
    assert "ScaledUp" in result.stdout  # the live view showed the decisions
    assert not (tmp_path / "cluster").exists(), "the demo left its cluster behind"
