"""The real operator as a user runs it: `turnpike run`, in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hack.ports import free_port


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text endpoint's samples as {'name{labels}': value}."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    metrics_url: str
    log_path: Path

    def metrics(self) -> dict[str, float]:
        """Samples of the operator's /metrics as {'name{labels}': value}."""
        return scrape(self.metrics_url)

    def total(self, name: str) -> float:
        return sum(v for k, v in self.metrics().items() if k.startswith(name + "{"))

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def start_operator(
    kubeconfig: Path, log_path: Path, *extra: str, timeout: float = 60
) -> OperatorProcess:
    port = free_port()
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "KUBECONFIG": str(kubeconfig)}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "turnpike.cli",
                "run",
                f"--kubeconfig={kubeconfig}",
                f"--metrics-bind-address=127.0.0.1:{port}",
                "--leader-election-namespace=default",
                "--log-format=text",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    operator = OperatorProcess(process, f"http://127.0.0.1:{port}/metrics", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"operator exited {process.returncode}:\n{operator.log_tail()}")
        try:
            if operator.total("turnpike_leader") == 1:
                return operator
        except OSError:
            pass
        time.sleep(0.2)
    operator.stop()
    raise TimeoutError(f"operator did not become leader in {timeout}s:\n{operator.log_tail()}")
