"""A throwaway Prometheus server on 127.0.0.1 that scrapes given targets.

Uses the ``prometheus`` binary of Debian's package (install it with
``apt-get install -y --no-install-recommends prometheus``; the package's
service is not needed and not used). The config is generated: one static
scrape job, every target with its own labels (``namespace``/``pod`` to look
like a PodMonitor's series), a short scrape interval, storage in a temporary
directory removed on stop.

    from hack import prometheus

    target = prometheus.ScrapeTarget("127.0.0.5:8002", {"namespace": "ns", "pod": "p0"})
    with prometheus.PrometheusServer([target], scrape_interval_s=1) as prom:
        prom.url        # "http://127.0.0.1:PORT", for PrometheusSource
        prom.query("up")

CLI::

    python hack/prometheus.py 127.0.0.5:8002 --label namespace=ns --label pod=p0
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack import netrule
from hack.ports import free_port

BINARY_ENV = "TURNPIKE_PROMETHEUS"
APT_PACKAGE = "prometheus"
INSTALL_HINT = f"apt-get install -y --no-install-recommends {APT_PACKAGE}"


class PrometheusError(RuntimeError):
    """Prometheus could not be started or answered nonsense."""


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """``address`` is ``ip:port`` on loopback or a harness address (hack/netrule.py);
    ``labels`` are attached to every series."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"

    def __post_init__(self) -> None:
        host, _, port = self.address.rpartition(":")
        if not port.isdigit() or not netrule.allowed(host):
            raise ValueError(
                f"scrape target {self.address!r} is not ip:port on loopback or the harness ranges"
            )


def find_binary() -> str | None:
    """``$TURNPIKE_PROMETHEUS``, else ``prometheus`` on PATH, else Debian's path."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("prometheus")
    if found:
        return found
    debian = "/usr/bin/prometheus"
    return debian if os.access(debian, os.X_OK) else None


def render_config(
    targets: Sequence[ScrapeTarget], *, scrape_interval_s: float, job: str = "triton"
) -> dict[str, Any]:
    """The prometheus.yml: one job, one static_configs entry per target."""
    interval = f"{max(1, round(scrape_interval_s * 1000))}ms"
    by_path: dict[str, list[ScrapeTarget]] = {}
    for target in targets:
        by_path.setdefault(target.metrics_path, []).append(target)
    jobs = []
    for index, (path, group) in enumerate(sorted(by_path.items())):
        jobs.append(
            {
                "job_name": job if index == 0 else f"{job}-{index}",
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "metrics_path": path,
                "static_configs": [
                    {"targets": [t.address], "labels": dict(t.labels)} for t in group
                ],
            }
        )
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": jobs,
    }


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PrometheusServer:
    """One Prometheus process on ``ip`` (loopback), in its own process group."""

    def __init__(
        self,
        targets: Sequence[ScrapeTarget],
        *,
        ip: str = "127.0.0.1",
        port: int | None = None,
        scrape_interval_s: float = 1.0,
        binary: str | None = None,
        workdir: Path | str | None = None,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        if not ipaddress.ip_address(ip).is_loopback:
            raise ValueError(f"{ip} is not loopback")
        self.targets = list(targets)
        self.ip = ip
        self.port = port
        self.scrape_interval_s = scrape_interval_s
        self.binary = binary
        self._workdir = Path(workdir) if workdir is not None else None
        self._own_workdir = workdir is None
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.startup_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("not started")
        return f"http://{self.ip}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "prometheus.log" if self._workdir is not None else None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> PrometheusServer:
        if self._process is not None:
            raise PrometheusError("already started")
        binary = self.binary or find_binary()
        if binary is None:
            raise PrometheusError(f"no prometheus binary; install it: {INSTALL_HINT}")
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="turnpike-prometheus-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        config = self._workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(render_config(self.targets, scrape_interval_s=self.scrape_interval_s))
        )
        # A kernel-picked port can be taken between our probe and Prometheus'
        # bind; retry a few times with a fresh one when the caller chose none.
        attempts = 1 if self.port is not None else 3
        for attempt in range(attempts):
            port = self.port if self.port is not None and attempt == 0 else free_port(self.ip)
            self.port = port
            try:
                self._spawn(binary, config, port)
                return self
            except PrometheusError:
                if attempt + 1 >= attempts or "address already in use" not in self.log_tail():
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, binary: str, config: Path, port: int) -> None:
        assert self._workdir is not None
        data = self._workdir / "data"
        shutil.rmtree(data, ignore_errors=True)
        began = time.monotonic()
        with open(self._workdir / "prometheus.log", "wb") as log:
            self._process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data}",
                    "--storage.tsdb.retention.time=1h",
                    f"--web.listen-address={self.ip}:{port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self._workdir),
                start_new_session=True,
            )
        deadline = began + self.startup_timeout_s
        try:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise PrometheusError(
                        f"prometheus exited with {code} before it was ready:\n{self.log_tail()}"
                    )
                if self._ready():
                    break
                if time.monotonic() >= deadline:
                    raise PrometheusError(
                        f"prometheus not ready within {self.startup_timeout_s:g}s:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.05)  # poll interval, bounded by the deadline above
        except BaseException:
            self._terminate()
            raise
        self.startup_s = time.monotonic() - began

    def _ready(self) -> bool:
        try:
            with _opener().open(f"{self.url}/-/ready", timeout=1.0) as response:
                return int(response.status) == 200
        except (OSError, ValueError):
            return False

    def query(self, promql: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """An instant query's ``data.result`` list."""
        body = urllib.parse.urlencode({"query": promql}).encode()
        try:
            with _opener().open(f"{self.url}/api/v1/query", data=body, timeout=timeout_s) as r:
                payload = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"query failed: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
        if payload.get("status") != "success":
            raise PrometheusError(f"query failed: {payload}")
        return list(payload["data"]["result"])

    def targets_health(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """``/api/v1/targets``' active targets (``health``, ``lastError``, ``labels``)."""
        with _opener().open(f"{self.url}/api/v1/targets", timeout=timeout_s) as response:
            payload = json.loads(response.read())
        return list(payload["data"]["activeTargets"])

    def _terminate(self) -> int | None:
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        return process.returncode

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout_s``; removes a temporary workdir."""
        code = self._terminate()
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        return code

    def log_tail(self, limit: int = 4000) -> str:
        path = self.log_path
        if path is None:
            return ""
        try:
            return path.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", help="ip:port to scrape (loopback)")
    parser.add_argument("--label", action="append", default=[], help="NAME=VALUE on all targets")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--scrape-interval-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label)
    targets = [ScrapeTarget(address, labels) for address in args.targets]
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with PrometheusServer(targets, port=args.port, scrape_interval_s=args.scrape_interval_s) as p:
        print(f"prometheus ready in {p.startup_s:.2f}s at {p.url}", flush=True)
        while not stop.wait(0.5) and p.alive():
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
