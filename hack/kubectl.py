"""kubectl as a user runs it (tests, demo, benchmarks): JSON in, JSON out, bounded waits."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class KubectlError(RuntimeError):
    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.stderr = stderr
        self.returncode = returncode


@dataclass(frozen=True)
class Kubectl:
    binary: str
    kubeconfig: Path
    namespace: str | None = None

    def in_namespace(self, namespace: str) -> Kubectl:
        return Kubectl(self.binary, self.kubeconfig, namespace)

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, f"--kubeconfig={self.kubeconfig}"]
        if self.namespace:
            argv.append(f"--namespace={self.namespace}")
        argv.extend(args)
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(list(args), result.returncode, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str | None = None, *args: str) -> Any:
        return self.json("get", kind, *([name] if name else []), *args)

    def items(self, kind: str, *args: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(kind, None, *args)["items"]
        return items

    def apply(self, *objects: dict[str, Any], server_side: bool = True) -> str:
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        flags = ["--server-side", "--field-manager=tests"] if server_side else []
        return self.run("apply", *flags, "-f", "-", stdin=doc).stdout

    def create(self, *objects: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        return self.run("create", "-f", "-", stdin=doc, check=False)


def eventually(
    what: str, probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.25
) -> T:
    """Poll probe until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        try:
            last = probe()
        except (KubectlError, subprocess.TimeoutExpired) as error:
            # A slow answer on a busy machine is one more try, not the end.
            last = None
            error_text = str(error)
        else:
            error_text = ""
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; last value {last!r} {error_text}"
            )
        time.sleep(interval)


@dataclass(frozen=True)
class ReadyPods:
    """The ready, not terminating pods of a selector, as Triton HTTP targets.

    For clients that talk to each pod directly (a benchmark probing one pod's
    queue, say) rather than through the Service.
    """

    kubectl: Kubectl
    selector: str
    port: int = 8000

    def ready_targets(self) -> list[str]:
        try:
            pods = self.kubectl.items("pods", "-l", self.selector)
        except (KubectlError, subprocess.TimeoutExpired):
            return []
        return [
            f"{p['status']['podIP']}:{self.port}"
            for p in pods
            if p.get("status", {}).get("podIP")
            and not p["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])
            )
        ]

