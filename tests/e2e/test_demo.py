"""The demo's path, shortened: real Tritons behind fake GPU pods, scaled by queue depth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.cluster
@pytest.mark.triton
@pytest.mark.skipif(
    bool(os.environ.get("KUBECONFIG")) and os.environ.get("TURNPIKE_LOCAL_CLUSTER") != "1",
    reason="the demo's loopback kubelet needs the local cluster's fake nodes",
)
def test_quick_demo_scales_up_and_down_on_real_triton_queues(tmp_path: Path) -> None:
    # A cluster of its own: the suite's operator must not manage the demo's objects.
    env = {**os.environ, "TURNPIKE_CLUSTER_DIR": str(tmp_path / "cluster")}
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "demo.py"), "--quick", f"--out={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
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
    assert "ScaledUp" in result.stdout  # the live view showed the decisions
    assert not (tmp_path / "cluster").exists(), "the demo left its cluster behind"
