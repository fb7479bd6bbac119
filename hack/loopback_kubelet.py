"""A "loopback kubelet": a real Triton for every running pod of a fake node.

kwok marks pods Running and gives them 127.x IPs, but nothing listens there.
This runs beside kwok and starts a real tritonserver (CPU, Python backend,
hack/triton/model_repository) bound to each selected pod's IP on Triton's
usual ports, and stops it when the pod goes away, so the operator's metric
scraping and a load generator reach real Tritons. Used by the demo and the
end-to-end tests; bounded by an optional lifetime and by max_servers.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack import tritonlocal

log = logging.getLogger("loopback-kubelet")


def running_pods(kubectl: list[str], namespace: str, selector: str) -> dict[str, str]:
    """{pod name: pod IP} of pods that are Running and not terminating."""
    import json

    result = subprocess.run(
        [*kubectl, "get", "pods", "-n", namespace, "-l", selector, "-o", "json"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    if result.returncode != 0:
        return {}
    pods: dict[str, str] = {}
    for pod in json.loads(result.stdout).get("items", []):
        status: dict[str, Any] = pod.get("status", {})
        ip = status.get("podIP")
        if ip and status.get("phase") == "Running" and not pod["metadata"].get(
                "deletionTimestamp"):
            pods[pod["metadata"]["name"]] = ip
    return pods


@dataclass
class LoopbackKubelet:
    kubectl: list[str]
    namespace: str
    selector: str
    service_time_ms: float = 50.0
    max_servers: int = 16
    poll_seconds: float = 0.5
    log_dir: Path | None = None
    servers: dict[str, tritonlocal.TritonServer] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    started_at: dict[str, float] = field(default_factory=dict)

    def ready_targets(self) -> list[str]:
        """host:port of every Triton that answers, for the load generator."""
        with self._lock:
            servers = list(self.servers.values())
        return [s.http_address for s in servers if s.alive()]

    def sync_once(self) -> None:
        pods = running_pods(self.kubectl, self.namespace, self.selector)
        with self._lock:
            gone = [name for name in self.servers if name not in pods]
        for name in gone:
            with self._lock:
                server = self.servers.pop(name)
            log.info("pod %s gone: stopping its Triton", name)
            server.stop()
        for name, ip in sorted(pods.items()):
            if self._stop.is_set():
                return
            with self._lock:
                if name in self.servers or len(self.servers) >= self.max_servers:
                    continue
            log_path = self.log_dir / f"triton-{name}.log" if self.log_dir else None
            server = tritonlocal.TritonServer(ip=ip, service_time_ms=self.service_time_ms,
                                              log_path=log_path)
            try:
                server.start()
            except tritonlocal.TritonError as error:
                log.warning("Triton for pod %s on %s failed to start: %s", name, ip, error)
                server.close()
                continue
            with self._lock:
                self.servers[name] = server
                self.started_at[name] = time.time()
            log.info("pod %s: Triton ready on %s in %.1fs", name, ip, server.startup_s or 0)

    def _loop(self, lifetime: float | None) -> None:
        deadline = time.monotonic() + lifetime if lifetime else None
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                self.sync_once()
            except Exception:  # keep serving the others; the next pass retries
                log.exception("loopback kubelet pass failed")
            self._stop.wait(self.poll_seconds)

    def start(self, lifetime: float | None = None) -> LoopbackKubelet:
        tritonlocal.prepare()
        self._thread = threading.Thread(target=self._loop, args=(lifetime,), daemon=True,
                                        name="loopback-kubelet")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._lock:
            servers = list(self.servers.values())
            self.servers.clear()
        for server in servers:
            server.stop()

    def __enter__(self) -> LoopbackKubelet:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--kubectl", default="kubectl")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--selector", required=True, help="label selector of the pods")
    parser.add_argument("--service-time-ms", type=float, default=50.0)
    parser.add_argument("--lifetime", type=float, default=600.0, help="seconds, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    kubelet = LoopbackKubelet([args.kubectl, f"--kubeconfig={args.kubeconfig}"],
                              args.namespace, args.selector, args.service_time_ms)
    kubelet.start(lifetime=args.lifetime)
    try:
        assert kubelet._thread is not None
        kubelet._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
