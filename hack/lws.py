"""The LeaderWorkerSet controller on the local cluster: built, installed, run.

Multi-node replicas (a model bigger than one node) run on LeaderWorkerSet
(``sigs.k8s.io/lws``), the controller KServe, NIM, Dynamo and llm-d use. Here the
real controller is built from the Go module pinned in ``hack/lws/go.mod``
(cached per machine under ``~/.cache/turnpike/lws-<key>/``, like the rest of
the cluster) and runs as a plain process beside the control plane:

- its CRD comes from the same module (``config/crd/bases``);
- its admission webhooks (defaulting and validating LeaderWorkerSets; the pod
  webhook that gives each pod of a group its index, leader address and group
  size) are served on a ``127.0.0.1`` port with a certificate from a private CA
  made here; the webhook configurations point at that URL. The pod webhooks
  select only pods labelled ``leaderworkerset.sigs.k8s.io/name``, as upstream's
  kustomize patch does, so no other pod of the cluster depends on this process;
- its internal certificate rotation and leader election are off (one process,
  our certificate).

    controller = lws.start(kubectl)   # builds on first use (~2.5 min on 2 cores)
    ...
    controller.stop()                 # webhook configurations first, then the process

Standard library, openssl and the Go toolchain only.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack.gobuild import GoComponent
from hack.kubectl import Kubectl, eventually
from hack.ports import free_port

HERE = Path(__file__).resolve().parent / "lws"
PACKAGE = "sigs.k8s.io/lws/cmd"
MODULE = "sigs.k8s.io/lws"
CRD_NAME = "leaderworkersets.leaderworkerset.x-k8s.io"
WEBHOOK_NAME = "turnpike-local-lws"
GROUP_LABEL = "leaderworkerset.sigs.k8s.io/name"
# Bump when build() changes how the binary is made (its inputs are hashed anyway).
RECIPE = 1


COMPONENT = GoComponent(
    name="lws",
    directory=HERE,
    package=PACKAGE,
    binary="lws-controller",
    inputs=("go.mod", "go.sum"),
    recipe=RECIPE,
    cold_build="about 2.5 minutes",
)


def _log(message: str) -> None:
    COMPONENT.log(message)


def cache_key() -> str:
    return COMPONENT.cache_key()


def build() -> Path:
    """The controller binary, built once per machine and version."""
    return COMPONENT.build()


def module_dir() -> Path:
    return Path(COMPONENT.go("list", "-m", "-f", "{{.Dir}}", MODULE))


def crd() -> dict[str, Any]:
    path = (
        module_dir() / "config" / "crd" / "bases" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
    )
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def _certificates(directory: Path) -> bytes:
    """A CA and a serving certificate for 127.0.0.1 (tls.crt, tls.key); the CA's PEM."""
    ossl = shutil.which("openssl") or "openssl"

    def run(*args: str) -> None:
        subprocess.run([ossl, *args], cwd=directory, check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=turnpike-local-lws-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=lws-webhook",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        "tls.key",
        "-out",
        "tls.crt",
    )
    return (directory / "ca.crt").read_bytes()


def webhook_configurations(port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """Upstream's webhooks (config/webhook), served at 127.0.0.1:``port``."""
    bundle = base64.b64encode(ca_pem).decode()

    def hook(
        name: str, path: str, resource: str, group: str, operations: list[str], pods: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "rules": [
                {
                    "apiGroups": [group],
                    "apiVersions": ["v1"],
                    "operations": operations,
                    "resources": [resource],
                }
            ],
        }
        if pods:
            body["objectSelector"] = {
                "matchExpressions": [{"key": GROUP_LABEL, "operator": "Exists"}]
            }
        return body

    group = "leaderworkerset.x-k8s.io"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_NAME},
            "webhooks": [
                hook(
                    "mleaderworkerset.kb.io",
                    "/mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
                    "leaderworkersets",
                    group,
                    ["CREATE", "UPDATE"],
                    pods=False,
                ),
                hook("mpod.kb.io", "/mutate--v1-pod", "pods", "", ["CREATE"], pods=True),
            ],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_NAME},
            "webhooks": [
                hook(
                    "vleaderworkerset.kb.io",
                    "/validate-leaderworkerset-x-k8s-io-v1-leaderworkerset",
                    "leaderworkersets",
                    group,
                    ["CREATE", "UPDATE"],
                    pods=False,
                ),
                hook(
                    "vpod.kb.io", "/validate--v1-pod", "pods", "", ["CREATE", "UPDATE"], pods=True
                ),
            ],
        },
    ]


def _established(kubectl: Kubectl) -> bool:
    """Whether the CRD serves (``kubectl wait`` fails outright while a new CRD has
    no conditions yet, which is its state for a moment after creation)."""
    conditions = kubectl.get("crd", CRD_NAME).get("status", {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Controller:
    kubectl: Kubectl
    process: subprocess.Popen[bytes]
    workdir: Path
    webhook_port: int
    health_port: int

    @property
    def log_path(self) -> Path:
        return self.workdir / "lws-controller.log"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Webhook configurations first (nothing may call a dead webhook), then the process."""
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            self.kubectl.run("delete", kind, WEBHOOK_NAME, "--ignore-not-found", check=False)
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(kubectl: Kubectl, timeout: float = 90) -> Controller:
    """Build (cached), install the CRD, run the controller, register its webhooks."""
    binary = build()
    workdir = Path(tempfile.mkdtemp(prefix="turnpike-lws-"))
    certs = workdir / "certs"
    certs.mkdir()
    ca_pem = _certificates(certs)
    webhook_port, health_port = free_port(), free_port()
    config = workdir / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "config.lws.x-k8s.io/v1alpha1",
                "kind": "Configuration",
                "leaderElection": {"leaderElect": False},
                "internalCertManagement": {"enable": False},
                "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(certs)},
                "metrics": {"bindAddress": "0"},
                "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
            }
        )
    )
    kubectl.apply(crd())
    eventually("the LeaderWorkerSet CRD Established", lambda: _established(kubectl), timeout=60)
    log = (workdir / "lws-controller.log").open("wb")
    process = subprocess.Popen(
        [str(binary), f"--config={config}", "--zap-log-level=info"],
        env={**os.environ, "KUBECONFIG": str(kubectl.kubeconfig), "NO_PROXY": "127.0.0.1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    controller = Controller(kubectl, process, workdir, webhook_port, health_port)
    deadline = time.monotonic() + timeout
    while not _listening(webhook_port):
        if not controller.alive() or time.monotonic() > deadline:
            tail = controller.log_tail()
            controller.stop()
            raise RuntimeError(f"the LWS controller did not serve its webhooks:\n{tail}")
        time.sleep(0.2)
    kubectl.apply(*webhook_configurations(webhook_port, ca_pem), server_side=False)
    _log(f"controller running (pid {process.pid}), webhooks on 127.0.0.1:{webhook_port}")
    return controller


if __name__ == "__main__":
    print(json.dumps({"binary": str(build()), "crd": CRD_NAME}))
