"""The local test cluster: a real Kubernetes control plane, fake GPU pools and a real node.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok run as
plain processes on free 127.0.0.1 ports; kwok plays the kubelets of nodes that
look the way GPU Feature Discovery and the NVIDIA device plugin present them.
A real node (``hack/realnode.py``: kubelet, containerd, runc, CNI, kube-proxy,
a GPU device plugin) runs the pods scheduled to it, with CoreDNS
(``hack/coredns.py``) on the node's bridge address as their cluster DNS. The
cluster shape file says which pools are kwok and which is real. Every address
handed out is loopback, or in the harness ranges of ``hack/netrule.py`` that
exist only on the real node's bridge, so nothing here ever dials a host off
this machine.

    python hack/localcluster.py up          # build (cached) and start, or reuse
    python hack/localcluster.py down        # stop every process, remove state
    python hack/localcluster.py kubeconfig  # print the kubeconfig path
    python hack/localcluster.py status

State lives in ``.state/cluster`` of the checkout (TURNPIKE_CLUSTER_DIR
overrides it); the compiled binaries live in the machine-wide build cache.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack import coredns, netrule, realnode
from hack.ports import free_port

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack"
STATE_DIR = Path(os.environ.get("TURNPIKE_CLUSTER_DIR", REPO / ".state" / "cluster"))
SHAPE_FILE = Path(os.environ.get("TURNPIKE_CLUSTER_SHAPE", HACK / "cluster-shape.yaml"))

# Services must be reachable from the real node's pods, so their range is a
# harness range; kwok's fake pods keep loopback addresses.
SERVICE_CIDR = netrule.SERVICE_CIDR
DEFAULT_POD_CIDR = "127.64.255.0/24"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# The cluster DNS, a host process on the real node's bridge address: only a
# cluster with a real node runs it (kwok's pods never resolve anything).
CLUSTER_DNS = "coredns"
# Every component a cluster with a real node runs (see components()).
COMPONENTS = (*CONTROL_PLANE, CLUSTER_DNS, *realnode.COMPONENTS)
NO_PROXY = netrule.no_proxy()
# Ports that accept connections once the cluster is up (etcd's peer port only
# listens for other members, and there are none).
SERVING_PORTS = ("etcd", "apiserver", "controller_manager", "scheduler", "kwok")


def log(message: str) -> None:
    print(f"[localcluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    # None when the cluster is the user's own (KUBECONFIG), not one started here.
    bin_dir: Path | None

    def kubectl(self) -> str:
        if self.bin_dir is not None:
            return str(self.bin_dir / "kubectl")
        found = shutil.which("kubectl")
        if found is None:
            raise RuntimeError("KUBECONFIG points at a cluster but kubectl is not on PATH")
        return found


# ---------------------------------------------------------------- build


def build() -> Path:
    """Compile (or find cached) binaries; returns the cache directory."""
    result = subprocess.run(
        [str(HACK / "build-cluster.sh")], stdout=subprocess.PIPE, text=True, check=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- helpers


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, proc_names: tuple[str, ...] = ()
) -> None:
    """Poll until check() holds; fail early with the log tail if a process died."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if check():
            return
        for name in proc_names:
            pid = _read_state().get("pids", {}).get(name)
            if pid is not None and not process_alive(pid):
                raise RuntimeError(f"{name} exited while waiting for {what}:\n{_log_tail(name)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _log_tail(name: str, lines: int = 30) -> str:
    path = STATE_DIR / "logs" / f"{name}.log"
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def process_alive(pid: int) -> bool:
    """True while any thread of pid has not exited.

    A Go program's leader thread can already be a zombie while its other threads
    are still tearing down and holding its listening sockets; "dead" means every
    thread is gone, so a port is free once its owner is.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def _ours(pid: int) -> bool:
    """True when pid still runs one of our components (pids are recycled)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(STATE_DIR) in cmdline


def _read_state() -> dict[str, Any]:
    path = STATE_DIR / "state.json"
    if not path.exists():
        return {}
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except json.JSONDecodeError:
        return {}


def components(state: dict[str, Any]) -> tuple[str, ...]:
    """The processes this cluster runs: the control plane, plus the real node's."""
    if not state.get("real_pool"):
        return CONTROL_PLANE
    node = [*realnode.COMPONENTS]
    if not state["real_pool"].get("gpus"):
        node.remove("gpu-device-plugin")
    # A cluster started before the harness had a cluster DNS runs none; it stays
    # reusable as it is (its pods' resolv.conf names no DNS server).
    dns = (CLUSTER_DNS,) if "coredns_ready" in state.get("ports", {}) else ()
    return (*CONTROL_PLANE, *dns, *node)


def _write_state(state: dict[str, Any]) -> None:
    tmp = STATE_DIR / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(STATE_DIR / "state.json")


def _run(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    result = subprocess.run(
        list(args), cwd=cwd, input=stdin, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(
    url: str, token: str | None = None, ca: Path | None = None, timeout: float = 2
) -> bool:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# ---------------------------------------------------------------- certificates


def _make_pki(pki: Path) -> None:
    """A private CA, the apiserver's serving and kubelet-client certificates, the SA key."""
    pki.mkdir(parents=True, exist_ok=True)
    ossl = shutil.which("openssl") or "openssl"

    def certificate(name: str, subject: str, *extra: str) -> None:
        """``name``.crt and ``name``.key; signed by the CA unless it is the CA."""
        signer = [] if name == "ca" else ["-CA", "ca.crt", "-CAkey", "ca.key"]
        _run(
            ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            "-subj", subject, *signer, *extra,
            "-keyout", f"{name}.key", "-out", f"{name}.crt",
            cwd=pki,
        )

    certificate("ca", "/CN=turnpike-local-ca")
    certificate(
        "apiserver",
        "/CN=kube-apiserver",
        "-addext",
        f"subjectAltName=IP:127.0.0.1,IP:{netrule.KUBERNETES_SERVICE_IP},IP:{netrule.NODE_IP},"
        "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "DNS:kubernetes.default.svc.cluster.local",
    )
    # The API server's client certificate for kubelets (logs, exec, port-forward).
    certificate("kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
    _run(ossl, "genrsa", "-out", "sa.key", "2048", cwd=pki)
    _run(ossl, "rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "turnpike-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode(),
                },
            }
        ],
        "users": [{"name": "turnpike-admin", "user": {"token": token}}],
        "contexts": [
            {
                "name": "turnpike-local",
                "context": {"cluster": "turnpike-local", "user": "turnpike-admin"},
            }
        ],
        "current-context": "turnpike-local",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# ---------------------------------------------------------------- nodes


def node_manifests(shape: dict[str, Any], first_index: int = 1) -> list[dict[str, Any]]:
    """Fake nodes as GFD and the device plugin would present them."""
    nodes: list[dict[str, Any]] = []
    index = first_index - 1
    for pool in shape["pools"]:
        if pool.get("real"):
            continue
        for n in range(int(pool["count"])):
            index += 1
            name = f"{pool['name']}-{n}"
            gpus = int(pool.get("gpus", 0))
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "turnpike.dev/pool": str(pool["name"]),
                "node.kubernetes.io/instance-type": f"fake-{pool['name']}",
                **{str(k): str(v) for k, v in pool.get("labels", {}).items()},
            }
            capacity = {"cpu": str(pool["cpu"]), "memory": str(pool["memory"]), "pods": "110"}
            taints: list[dict[str, str]] = []
            if gpus:
                labels.update(
                    {
                        "nvidia.com/gpu.present": "true",
                        "nvidia.com/gpu.product": str(pool["product"]),
                        "nvidia.com/gpu.count": str(gpus),
                        "nvidia.com/gpu.memory": str(pool.get("memoryMiB", 0)),
                        "nvidia.com/gpu.family": str(pool.get("family", "")),
                    }
                )
                capacity["nvidia.com/gpu"] = str(gpus)
                taints.append(dict(GPU_TAINT))
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]},
                    },
                    "spec": {"podCIDR": f"127.64.{index}.0/24", "taints": taints},
                    "status": {
                        "capacity": capacity,
                        "allocatable": capacity,
                        "addresses": [
                            {"type": "InternalIP", "address": f"127.0.1.{index}"},
                            {"type": "Hostname", "address": name},
                        ],
                    },
                }
            )
    return nodes


def load_shape() -> dict[str, Any]:
    shape: dict[str, Any] = yaml.safe_load(SHAPE_FILE.read_text())
    if not isinstance(shape, dict) or not isinstance(shape.get("pools"), list):
        raise ValueError(f"{SHAPE_FILE}: expected a mapping with a 'pools' list")
    return shape


# ---------------------------------------------------------------- lifecycle


def _start(name: str, argv: list[str], state: dict[str, Any]) -> None:
    logs = STATE_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY},
        )
    state.setdefault("pids", {})[name] = proc.pid
    state.setdefault("argv", {})[name] = argv
    _write_state(state)


def stop_component(name: str, timeout: float = 20) -> None:
    """Stop one running component (fault tests: an API server outage); see start_component."""
    state = _read_state()
    pid = state.get("pids", {}).get(name)
    if pid is None or not (process_alive(pid) and _ours(pid)):
        raise RuntimeError(f"{name} is not running")
    if name not in state.get("argv", {}):
        raise RuntimeError(f"{name}'s command line is not recorded: restart the cluster first")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.05)
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def start_component(name: str) -> None:
    """Start a component stopped by stop_component again, with the same command line."""
    state = _read_state()
    pid = state.get("pids", {}).get(name)
    if pid is not None and process_alive(pid) and _ours(pid):
        raise RuntimeError(f"{name} is still running")
    _start(name, state["argv"][name], state)


def running() -> Cluster | None:
    """The cluster of this checkout when every component is up and the API answers."""
    state = _read_state()
    pids = state.get("pids", {})
    if set(pids) != set(components(state)) or not all(
        process_alive(p) and _ours(p) for p in pids.values()
    ):
        return None
    kubeconfig = STATE_DIR / "kubeconfig"
    url = f"https://127.0.0.1:{state['ports']['apiserver']}/readyz"
    # Every process is alive: a slow answer on a busy machine is no reason to
    # tear the cluster down and start again, so give the API a few chances.
    ca = STATE_DIR / "pki" / "ca.crt"
    if not any(_http_ok(url, state["token"], ca, timeout=5) for _ in range(3)):
        return None
    return Cluster(kubeconfig=kubeconfig, bin_dir=Path(state["bin"]))


def up() -> Cluster:
    started = time.monotonic()
    existing = running()
    if existing is not None:
        apply_nodes(existing)
        log(f"reusing the running cluster ({time.monotonic() - started:.1f}s)")
        return existing
    if _read_state():
        log("found a partial cluster; stopping it first")
        down()

    cache = build()
    bin_dir = cache / "bin"
    pools = realnode.real_pools(load_shape())
    pool = pools[0] if pools else None
    dns_binary = coredns.build() if pool is not None else None
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    pki = STATE_DIR / "pki"
    _make_pki(pki)
    token = secrets.token_hex(24)
    identities = {
        "admin": (token, "turnpike-admin", "system:masters"),
        "kube-proxy": (secrets.token_hex(24), "system:kube-proxy", "system:node-proxiers"),
    }
    if pool is not None:
        # The kubelet's own identity, as the Node authorizer and NodeRestriction expect.
        node_user = f"system:node:{pool.node_name}"
        identities["kubelet"] = (secrets.token_hex(24), node_user, "system:nodes")
    (STATE_DIR / "tokens.csv").write_text(
        "".join(f'{t},{user},{user},"{group}"\n' for t, user, group in identities.values())
    )
    ports = {
        "etcd": free_port(),
        "etcd_peer": free_port(),
        "apiserver": free_port(),
        "controller_manager": free_port(),
        "scheduler": free_port(),
        "kwok": free_port(),
    }
    if pool is not None:
        ports.update(
            kubelet=10250,
            kubelet_healthz=free_port(),
            kube_proxy_healthz=free_port(),
            kube_proxy_metrics=free_port(),
            coredns_ready=free_port(),
        )
    state: dict[str, Any] = {
        "bin": str(bin_dir),
        "ports": ports,
        "token": token,
        "pids": {},
        "state_dir": str(STATE_DIR.resolve()),
        "real_pool": pool.__dict__ if pool is not None else None,
    }
    _write_state(state)
    kubeconfig = STATE_DIR / "kubeconfig"
    server = f"https://127.0.0.1:{ports['apiserver']}"
    _write_kubeconfig(kubeconfig, server, pki / "ca.crt", token)
    node_kubeconfigs: dict[str, Path] = {}
    for name in ("kubelet", "kube-proxy"):
        if name in identities:
            node_kubeconfigs[name] = STATE_DIR / f"{name}.kubeconfig"
            _write_kubeconfig(node_kubeconfigs[name], server, pki / "ca.crt", identities[name][0])
    if pool is not None:
        # The bridge and the guard table come first: the API server advertises
        # the bridge address, and no pod may start before the guard is in place.
        try:
            realnode.prepare_host(state, guarded_ports=[ports["apiserver"], ports["etcd"]])
        finally:
            # Recorded even when it fails half way, so that down() can undo it.
            _write_state(state)

    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    log("starting etcd")
    _start(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=turnpike",
            f"--data-dir={STATE_DIR / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=turnpike={peer_url}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
        state,
    )
    wait_for("etcd", lambda: _http_ok(f"{etcd_url}/health"), 30, ("etcd",))

    if pool is not None:
        # In-cluster clients reach the API server through the `kubernetes`
        # Service, whose endpoint is the bridge address. It listens on every
        # address; the guard table drops its port on every interface but lo
        # and the bridge.
        network = [
            "--bind-address=0.0.0.0",
            f"--advertise-address={netrule.NODE_IP}",
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            # Otherwise `kubectl logs` resolves the node's name with the machine's DNS.
            "--kubelet-preferred-address-types=InternalIP",
        ]
    else:
        network = [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # Endpoints refuse loopback addresses: the apiserver's own is not published.
            "--endpoint-reconciler-type=none",
        ]
    log("starting kube-apiserver")
    _start(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            *network,
            f"--secure-port={ports['apiserver']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={STATE_DIR / 'tokens.csv'}",
            f"--service-account-issuer={server}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
            "DefaultTolerationSeconds,Priority,PodSecurity,ResourceQuota,NodeRestriction,"
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
            "--allow-privileged=true",
            "--profiling=false",
            "--event-ttl=1h",
        ],
        state,
    )
    wait_for(
        "kube-apiserver /readyz",
        lambda: _http_ok(f"{server}/readyz", token, pki / "ca.crt"),
        120,
        ("etcd", "kube-apiserver"),
    )
    started_components: tuple[str, ...] = CONTROL_PLANE

    log("starting kube-controller-manager, kube-scheduler and kwok")
    _start(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['controller_manager']}",
            "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false",
            "--controllers=*,-nodeipam",
            # The default 20 QPS makes kcm the bottleneck of every benchmark here.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
        ],
        state,
    )
    _start(
        "kube-scheduler",
        [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['scheduler']}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        state,
    )
    stages = cache / "kwok-stages"
    stage_files = [
        stages / "node" / "fast" / "node-initialize.yaml",
        stages / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
        stages / "pod" / "fast" / "pod-ready.yaml",
        stages / "pod" / "fast" / "pod-complete.yaml",
        stages / "pod" / "fast" / "pod-delete.yaml",
    ]
    kwok_config = STATE_DIR / "kwok.yaml"
    kwok_config.write_text("\n---\n".join(p.read_text() for p in stage_files))
    _start(
        "kwok",
        [
            str(bin_dir / "kwok"),
            f"--kubeconfig={kubeconfig}",
            f"--config={kwok_config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={'='.join(FAKE_NODE_ANNOTATION)}",
            f"--cidr={DEFAULT_POD_CIDR}",
            "--node-ip=127.0.1.254",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            "--node-lease-duration-seconds=40",
        ],
        state,
    )
    cluster = Cluster(kubeconfig=kubeconfig, bin_dir=bin_dir)
    if pool is not None and dns_binary is not None:
        _start_cluster_dns(dns_binary, kubeconfig, state)
    if pool is not None:
        log(f"starting the real node {pool.node_name} (containerd, kubelet, kube-proxy)")
        realnode.start(
            state,
            pool,
            bin_dir,
            pki,
            node_kubeconfigs,
            start_process=lambda name, argv: _start(name, argv, state),
            wait_for=wait_for,
        )
        started_components = components(state)
    if pool is not None:
        # Before the kubelet can run anything it is asked to.
        _run(
            cluster.kubectl(), f"--kubeconfig={kubeconfig}", "apply", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": NO_HOST_NETWORK}),
        )
    apply_nodes(cluster)
    if pool is not None:
        kubectl_argv = [cluster.kubectl(), f"--kubeconfig={kubeconfig}"]
        wait_for(
            f"real node {pool.node_name} Ready with {pool.gpus} nvidia.com/gpu",
            lambda: realnode.node_ready(kubectl_argv, pool),
            120,
            started_components,
        )
    kubectl = cluster.kubectl()
    wait_for(
        "the default ServiceAccount",
        lambda: (
            subprocess.run(
                [
                    kubectl,
                    f"--kubeconfig={kubeconfig}",
                    "get",
                    "serviceaccount",
                    "default",
                    "-n",
                    "default",
                ],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        ),
        60,
        started_components,
    )
    # "Up" means every component serves: the scheduler and kwok bind their
    # ports a little after they start, and a caller may probe them at once.
    wait_for(
        "every component's port",
        lambda: all(_port_open(ports[name]) for name in SERVING_PORTS),
        60,
        started_components,
    )
    log(f"cluster up in {time.monotonic() - started:.1f}s; KUBECONFIG={kubeconfig}")
    return cluster


def _start_cluster_dns(binary: Path, kubeconfig: Path, state: dict[str, Any]) -> None:
    """CoreDNS on the bridge address, before the kubelet hands that address to pods."""
    address, port = netrule.CLUSTER_DNS_IP, coredns.DNS_PORT
    busy = coredns.listeners(address, port)
    if busy:
        raise RuntimeError(
            f"the cluster DNS needs {address}:{port}, which is taken: {', '.join(busy)}"
        )
    corefile = STATE_DIR / "Corefile"
    corefile.write_text(
        coredns.corefile(kubeconfig, [address], port, state["ports"]["coredns_ready"])
    )
    log(f"starting CoreDNS on {address}:{port}")
    _start(CLUSTER_DNS, coredns.command(binary, corefile), state)
    wait_for(
        f"CoreDNS serving {address}:{port}",
        lambda: coredns.ready(state["ports"]["coredns_ready"]) and coredns.serving(address, port),
        60,
        (*CONTROL_PLANE, CLUSTER_DNS),
    )


# Pods sharing the host's network namespace would bypass the guard table's
# per-interface rules: the local cluster refuses them.
NO_HOST_NETWORK = [
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "turnpike-local-no-host-network"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["pods"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "!has(object.spec.hostNetwork) || !object.spec.hostNetwork",
                    "message": "the local test cluster refuses hostNetwork pods: they would "
                    "bypass the network guard of its real node (hack/netrule.py)",
                }
            ],
        },
    },
    {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "turnpike-local-no-host-network"},
        "spec": {
            "policyName": "turnpike-local-no-host-network",
            "validationActions": ["Deny"],
        },
    },
]


def apply_nodes(cluster: Cluster) -> None:
    """Create the fake nodes (idempotent) and wait until kwok reports them Ready."""
    nodes = node_manifests(load_shape())
    kubectl = cluster.kubectl()
    kc = f"--kubeconfig={cluster.kubeconfig}"
    existing = set(_run(kubectl, kc, "get", "nodes", "-o", "name").split())
    missing = [n for n in nodes if f"node/{n['metadata']['name']}" not in existing]
    if missing:
        # create, not apply: a Node's status is only accepted on create.
        _run(
            kubectl,
            kc,
            "create",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": missing}),
        )
    names = [n["metadata"]["name"] for n in nodes]
    if not names:
        return
    wait_for(
        f"{len(names)} nodes Ready",
        lambda: (
            subprocess.run(
                [
                    kubectl,
                    kc,
                    "wait",
                    "--for=condition=Ready",
                    "--timeout=2s",
                    *(f"node/{n}" for n in names),
                ],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        ),
        60,
        CONTROL_PLANE if cluster.bin_dir else (),
    )


def down() -> None:
    """Stop every process this checkout's cluster started and remove its state."""
    state = _read_state()
    pids: dict[str, int] = state.get("pids", {})
    ours = {name: pid for name, pid in pids.items() if process_alive(pid) and _ours(pid)}
    if state.get("realnode") is not None:
        # The node first, while containerd can still stop its pods cleanly.
        bin_dir = Path(state["bin"]) if state.get("bin") else None
        realnode.stop(state, bin_dir, ours, process_alive)
    # The cluster DNS first (its clients, the node's pods, are gone), then the
    # control plane in reverse start order.
    for name in (CLUSTER_DNS, *reversed(CONTROL_PLANE)):
        pid = ours.get(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(process_alive(p) for p in ours.values()):
        time.sleep(0.1)
    killed = [pid for pid in ours.values() if process_alive(pid)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(process_alive(p) for p in killed):
        time.sleep(0.05)
    # The bridge, the guard table and the sysctls last: the API server listened
    # on every interface until a moment ago.
    realnode.undo_host(state)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    if ours:
        log(f"stopped {', '.join(sorted(ours))}")


def ensure() -> Cluster:
    """The cluster tests and tools should use: the user's KUBECONFIG wins."""
    user = os.environ.get("KUBECONFIG")
    if user and Path(user).exists() and os.environ.get("TURNPIKE_LOCAL_CLUSTER") != "1":
        return Cluster(kubeconfig=Path(user), bin_dir=None)
    return up()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "kubeconfig", "status", "build"])
    args = parser.parse_args(argv)
    if args.command == "up":
        up()
        print(STATE_DIR / "kubeconfig")
    elif args.command == "down":
        down()
    elif args.command == "build":
        print(build())
    elif args.command == "kubeconfig":
        cluster = running()
        if cluster is None:
            print("no local cluster is running; run `make cluster-up`", file=sys.stderr)
            return 1
        print(cluster.kubeconfig)
    elif args.command == "status":
        cluster = running()
        state = _read_state()
        print(
            json.dumps(
                {
                    "running": cluster is not None,
                    **{k: state.get(k) for k in ("ports", "pids", "bin")},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
