"""The local cluster's real node: kubelet, containerd, runc, CNI, kube-proxy, GPU device plugin.

kwok nodes only *schedule* pods; this node runs them, from exactly the pod spec
the API server holds, with the same kubelet a user runs. It lives beside the
kwok pools and is started and stopped by ``hack/localcluster.py``.

Networking (see ``hack/netrule.py``): pods get addresses on the bridge
``netrule.BRIDGE``, which carries the node's own address; the API server
advertises that address, so in-cluster clients reach it through the
``kubernetes`` Service, which kube-proxy (nftables mode) routes. Pods resolve
names with the cluster DNS (``hack/coredns.py``, a host process on that same
address), which the kubelet names in their resolv.conf. Before any pod
starts an nftables table drops every packet of the harness ranges that would
leave through another interface; nothing masquerades.

Everything it changes on the machine is recorded in the cluster's state and
undone by :func:`stop`: processes, cgroups, mounts, network namespaces, the
bridge and its veths, nftables tables, sysctls, and the few paths the kubelet
writes outside its root directory. Only one real node can run per machine (the
kubelet's device-plugin socket path is fixed), so a second cluster that wants
one is refused with the owner's name.

Images cannot be pulled here: ``hack/images/build.sh`` builds them (cached by
content) and they are imported into containerd once; every registry host is
mapped to a closed loopback port, so a pull of anything else fails at once and
locally.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack import coredns, netrule

REPO = Path(__file__).resolve().parent.parent
IMAGES_SCRIPT = REPO / "hack" / "images" / "build.sh"

# Processes of the real node, in start order.
COMPONENTS = ("containerd", "kubelet", "kube-proxy", "gpu-device-plugin")

GUARD_TABLE = ("inet", "turnpike_guard")
KUBE_PROXY_TABLES = (("ip", "kube-proxy"), ("ip6", "kube-proxy"))
# Tables iptables-nft creates for the kubelet's canary chains (KUBE-KUBELET-CANARY,
# KUBE-IPTABLES-HINT); removed at stop unless they existed before start.
IPTABLES_TABLES = tuple((fam, t) for fam in ("ip", "ip6") for t in ("filter", "nat", "mangle"))

# Kernel settings the kubelet, the bridge plugin and this module change.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
)

# Paths outside the state directory that the kubelet and containerd write to.
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
OWNER_FILE = Path("/run/turnpike-realnode.owner")
# containerd puts shim sockets and runc state here whatever its config says.
RUN_CONTAINERD = Path("/run/containerd")

REAL_NODE_TAINT = "turnpike.dev/real-node"


def log(message: str) -> None:
    print(f"[realnode {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Pool:
    """A real-node pool of the cluster shape (``real: true``)."""

    name: str
    gpus: int
    product: str
    family: str
    memory_mib: int

    @property
    def node_name(self) -> str:
        return f"{self.name}-0"

    def labels(self) -> dict[str, str]:
        """What GPU Feature Discovery puts on a node with these GPUs."""
        labels = {
            "turnpike.dev/pool": self.name,
            "turnpike.dev/node-kind": "real",
            "node.kubernetes.io/instance-type": f"real-{self.name}",
        }
        if self.gpus:
            labels.update(
                {
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": self.product,
                    "nvidia.com/gpu.count": str(self.gpus),
                    "nvidia.com/gpu.memory": str(self.memory_mib),
                    "nvidia.com/gpu.family": self.family,
                }
            )
        return labels


def real_pools(shape: dict[str, Any]) -> list[Pool]:
    pools = [p for p in shape["pools"] if p.get("real")]
    if sum(int(p.get("count", 1)) for p in pools) > 1:
        raise ValueError(
            "the cluster shape asks for more than one real node; one machine runs one "
            "(the kubelet's device-plugin socket path is fixed)"
        )
    return [
        Pool(
            name=str(p["name"]),
            gpus=int(p.get("gpus", 0)),
            product=str(p.get("product", "")),
            family=str(p.get("family", "")),
            memory_mib=int(p.get("memoryMiB", 0)),
        )
        for p in pools
        if int(p.get("count", 1)) > 0
    ]


# ---------------------------------------------------------------- small helpers


def _run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    values = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    return values


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        _sysctl_path(name).write_text(value + "\n")


def nft_tables() -> set[tuple[str, str]]:
    out = _run("nft", "list", "tables", check=False).stdout
    tables = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "table":
            tables.add((parts[1], parts[2]))
    return tables


def socket_dir(state_dir: Path) -> Path:
    """Unix sockets need short paths (108 bytes): keep them under /run."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return Path("/run/turnpike") / digest


def containerd_root() -> Path:
    """Content and snapshots persist per machine, like the builds: images are
    imported once, not at every cluster-up."""
    base = Path(os.environ.get("TURNPIKE_CACHE", Path.home() / ".cache" / "turnpike"))
    return base / "node" / "containerd"


def mounts_under(roots: Iterable[Path]) -> list[str]:
    """Mount points below any of ``roots``, deepest first."""
    prefixes = [str(r.resolve()) if r.exists() else str(r) for r in roots]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p + "/") for p in prefixes):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def veths_on_bridge() -> list[str]:
    out = _run("ip", "-j", "link", "show", "master", netrule.BRIDGE, check=False).stdout
    try:
        return [link["ifname"] for link in json.loads(out or "[]")]
    except json.JSONDecodeError:
        return []


def bridge_exists() -> bool:
    return Path(f"/sys/class/net/{netrule.BRIDGE}").exists()


def kubepods_cgroups() -> list[Path]:
    """Every cgroup the kubelet made (``/kubepods`` in each v1 hierarchy), deepest first."""
    found: list[Path] = []
    root = Path("/sys/fs/cgroup")
    if not root.is_dir():
        return found
    for hierarchy in root.iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except OSError:
        return []


# ---------------------------------------------------------------- config files


def guard_ruleset() -> str:
    """The nftables table that keeps harness traffic on the harness bridge."""
    family, table = GUARD_TABLE
    ranges = ", ".join(netrule.HARNESS_RANGES)
    bridge = netrule.BRIDGE
    dns, dns_port = netrule.CLUSTER_DNS_IP, coredns.DNS_PORT
    return f"""
table {family} {table} {{
  set harness {{ type ipv4_addr; flags interval; elements = {{ {ranges} }} }}
  # Forwarding happens only between pods of the bridge, whatever the addresses
  # (a pod with CAP_NET_RAW can forge its source; IPv6 is covered by interface).
  chain forward {{
    type filter hook forward priority -10; policy accept;
    iifname "{bridge}" oifname "{bridge}" accept
    iifname "{bridge}" drop
    oifname "{bridge}" drop
    ip saddr @harness drop
    ip daddr @harness drop
  }}
  # The last word before a packet leaves: harness addresses leave only on the
  # bridge, judged by the addresses before any NAT.
  chain postrouting {{
    type filter hook postrouting priority 300; policy accept;
    oifname "{bridge}" accept
    oifname "lo" accept
    ct original ip saddr @harness drop
    ct original ip daddr @harness drop
    ip saddr @harness drop
    ip daddr @harness drop
  }}
  # Pods reach the host only at harness addresses (the API server, the kubelet,
  # the tests' model servers) and never a resolver but the cluster's DNS
  # (hack/coredns.py, which forwards nothing): port 53 at its address, and only
  # to a socket bound to that address, not a wildcard one; nothing outside
  # reaches harness addresses or the API server's and etcd's ports.
  chain input {{
    type filter hook input priority -10; policy accept;
    iifname "lo" accept
    iifname "{bridge}" ip daddr {dns} udp dport {dns_port} socket wildcard 0 accept
    iifname "{bridge}" ip daddr {dns} tcp dport {dns_port} socket wildcard 0 accept
    # The handshake's last ACK finds a request socket, which "socket" cannot
    # judge; only a SYN accepted above gets the SYN-ACK that establishes it.
    iifname "{bridge}" ip daddr {dns} tcp dport {dns_port} ct state established accept
    iifname "{bridge}" udp dport 53 drop
    iifname "{bridge}" tcp dport 53 drop
    iifname "{bridge}" ip daddr @harness accept
    iifname "{bridge}" drop
    ip daddr @harness drop
    tcp dport @guarded_ports drop
  }}
  set guarded_ports {{ type inet_service; }}
}}
"""


def cni_config(state_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "turnpike",
        "plugins": [
            {
                "type": "bridge",
                "bridge": netrule.BRIDGE,
                "isGateway": True,
                # Never masquerade: pod traffic has nowhere to go but the bridge.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(state_dir / "cni" / "ipam"),
                    "ranges": [
                        [
                            {
                                "subnet": netrule.POD_CIDR,
                                "rangeStart": netrule.POD_RANGE_START,
                                "rangeEnd": netrule.POD_RANGE_END,
                                "gateway": netrule.NODE_IP,
                            }
                        ]
                    ],
                    # No default route: pods reach the harness range, nothing else.
                    "routes": [{"dst": netrule.HARNESS_RANGES[0]}],
                },
            },
        ],
    }


def containerd_config(state_dir: Path, cni_bin: Path, sandbox_image: str) -> str:
    sockets = socket_dir(state_dir)
    root = containerd_root()
    runc = shutil.which("runc") or "/usr/sbin/runc"
    return f"""version = 3
root = "{root}"
state = "{state_dir / 'containerd-state'}"
# Plugins that would write outside root and state, or that nothing here uses.
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{sockets / 'containerd.sock'}"

[ttrpc]
  address = "{sockets / 'containerd.sock.ttrpc'}"

[debug]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root.parent / 'opt'}"

[plugins."io.containerd.cri.v1.runtime"]
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF" (runc cannot lower oom_score_adj).
  restrict_oom_score_adj = true
  # Network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{state_dir / 'cni' / 'net.d'}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{state_dir / 'registry'}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


# Every registry resolves to a closed loopback port: a pull of an image that was
# not imported fails at once, on this machine, instead of leaving it.
REGISTRY_HOSTS = """server = "https://127.0.0.1:9"

[host."https://127.0.0.1:9"]
  capabilities = ["pull", "resolve"]
"""


def kubelet_config(state_dir: Path, pki: Path, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # This machine runs cgroup v1, which the kubelet refuses from 1.35 on
        # unless told otherwise.
        "failCgroupV1": False,
        "address": netrule.NODE_IP,
        "port": ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports["kubelet_healthz"],
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{socket_dir(state_dir) / 'containerd.sock'}",
        "podLogsDir": str(state_dir / "pod-logs"),
        # Pods ask the cluster's DNS (hack/coredns.py, a host process on the
        # bridge address), never the machine's resolver: the node's own
        # resolv.conf names none that a pod could reach, and no search domain.
        "clusterDNS": [netrule.CLUSTER_DNS_IP],
        "clusterDomain": coredns.CLUSTER_DOMAIN,
        "resolvConf": str(state_dir / "resolv.conf"),
        "registerWithTaints": [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
            # Only the real node runs what lands on it, and nothing can be pulled:
            # a GPU pod that names no product goes to the kwok pools when they fit.
            {"key": REAL_NODE_TAINT, "value": "true", "effect": "PreferNoSchedule"},
        ],
        # Images cannot be pulled back once collected.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "200Mi",
            "nodefs.available": "2%",
            "imagefs.available": "2%",
            "nodefs.inodesFree": "2%",
        },
        "failSwapOn": False,
        "serializeImagePulls": False,
        "shutdownGracePeriod": "0s",
        "maxPods": 110,
        "syncFrequency": "10s",
        "fileCheckFrequency": "20s",
    }


# ---------------------------------------------------------------- images


def build_images() -> list[dict[str, str]]:
    """Build (or find cached) the node's images; returns [{name, archive, key}].

    TURNPIKE_IMAGES_INDEX names an index that ``hack/images/build.sh`` printed
    earlier, to use those images as they are (a machine that builds its images
    in a separate step).
    """
    given = os.environ.get("TURNPIKE_IMAGES_INDEX")
    if given:
        listing = Path(given)
    else:
        result = subprocess.run(
            [str(IMAGES_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True
        )
        listing = Path(result.stdout.strip().splitlines()[-1])
    images: list[dict[str, str]] = json.loads(listing.read_text())
    return images


def ctr(state: dict[str, Any]) -> list[str]:
    """The ``ctr`` command line for the node's containerd, in Kubernetes' namespace."""
    sockets = socket_dir(Path(state["state_dir"]))
    return [str(Path(state["bin"]) / "ctr"), f"--address={sockets / 'containerd.sock'}",
            "-n", "k8s.io"]


def crictl(state: dict[str, Any]) -> list[str]:
    """The ``crictl`` command line for the node's containerd."""
    sockets = socket_dir(Path(state["state_dir"]))
    return [str(Path(state["bin"]) / "crictl"),
            f"--runtime-endpoint=unix://{sockets / 'containerd.sock'}"]


def node_images(state: dict[str, Any]) -> list[dict[str, str]]:
    """The node's images, built if their inputs changed since cluster-up and imported
    into the running node's containerd if missing (a code change rebuilds the
    operator image while the cluster runs)."""
    images = build_images()
    import_images(ctr(state), images)
    return images


def image_ref(images: list[dict[str, str]], stem: str) -> str:
    """The full ref of the image whose repository ends with ``stem``."""
    for image in images:
        repository = image["name"].rsplit(":", 1)[0]
        if repository.endswith("/" + stem):
            return image["name"]
    raise KeyError(f"no image {stem!r} in {[i['name'] for i in images]}")


def import_images(ctr: list[str], images: list[dict[str, str]]) -> None:
    present = set(_run(*ctr, "images", "ls", "-q", check=False).stdout.split())
    for image in images:
        name = image["name"]
        if name in present or f"docker.io/{name}" in present:
            continue
        started = time.monotonic()
        _run(*ctr, "images", "import", "--no-unpack=false", image["archive"], timeout=600)
        log(f"imported {name} ({time.monotonic() - started:.1f}s)")


# ---------------------------------------------------------------- lifecycle


Starter = Callable[[str, list[str]], None]


def prepare_host(state: dict[str, Any], guarded_ports: Iterable[int]) -> None:
    """Record what will change, then make the bridge and the guard table.

    The guard goes in before any pod can start, so nothing of the harness ranges
    ever leaves the machine, not even during start-up.
    """
    owner = _current_owner()
    state_dir = state["state_dir"]
    if owner and owner != state_dir:
        raise RuntimeError(
            f"another local cluster ({owner}) runs the real node on this machine; "
            f"stop it first (TURNPIKE_CLUSTER_DIR={owner} make cluster-down)"
        )
    OWNER_FILE.write_text(state_dir)
    node: dict[str, Any] = state.setdefault("realnode", {})
    node.setdefault("sysctls", read_sysctls())
    node.setdefault("tables_before", sorted(map(list, nft_tables())))
    node.setdefault(
        "paths_created",
        [
            str(p)
            for p in (Path("/var/lib/kubelet"), CONTAINER_LOG_LINKS, RUN_CONTAINERD)
            if not p.exists()
        ],
    )

    if not bridge_exists():
        _run("ip", "link", "add", netrule.BRIDGE, "type", "bridge")
    prefix = netrule.POD_CIDR.split("/")[1]
    addresses = _run("ip", "-4", "-o", "addr", "show", "dev", netrule.BRIDGE).stdout
    if f"{netrule.NODE_IP}/" not in addresses:
        _run("ip", "addr", "add", f"{netrule.NODE_IP}/{prefix}", "dev", netrule.BRIDGE)
    _run("ip", "link", "set", netrule.BRIDGE, "up")
    # Service addresses go to the bridge too, never to the default route.
    _run(
        "ip", "route", "replace", netrule.SERVICE_CIDR, "dev", netrule.BRIDGE,
        "src", netrule.NODE_IP,
    )
    family, table = GUARD_TABLE
    _run("nft", "delete", "table", family, table, check=False)
    subprocess.run(["nft", "-f", "-"], input=guard_ruleset(), text=True, check=True)
    for port in guarded_ports:
        _run("nft", "add", "element", family, table, "guarded_ports", f"{{ {port} }}")
    # Pods reach each other through the bridge; Service traffic between pods of
    # one bridge needs the bridge to hand packets to netfilter for un-NAT.
    _write_sysctl("net.bridge.bridge-nf-call-iptables", "1")


def _current_owner() -> str | None:
    try:
        owner = OWNER_FILE.read_text().strip()
    except OSError:
        return None
    state_file = Path(owner) / "state.json"
    if not state_file.exists():
        return None
    try:
        pids = json.loads(state_file.read_text()).get("pids", {})
    except json.JSONDecodeError:
        return None
    alive = any(
        _pid_alive(int(pids[name])) for name in COMPONENTS if name in pids
    )
    return owner if alive else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def start(
    state: dict[str, Any],
    pool: Pool,
    bin_dir: Path,
    pki: Path,
    kubeconfigs: dict[str, Path],
    start_process: Starter,
    wait_for: Callable[[str, Callable[[], bool], float, tuple[str, ...]], None],
) -> None:
    """Start containerd, the kubelet, kube-proxy and the device plugin for ``pool``."""
    state_dir = Path(state["state_dir"])
    ports: dict[str, int] = state["ports"]
    sockets = socket_dir(state_dir)
    sockets.mkdir(parents=True, exist_ok=True)
    for sub in ("cni/net.d", "cni/ipam", "registry/_default", "pod-logs", "kubelet"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    (state_dir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions ndots:1 attempts:1\n")
    (state_dir / "registry" / "_default" / "hosts.toml").write_text(REGISTRY_HOSTS)
    (state_dir / "cni" / "net.d" / "10-turnpike.conflist").write_text(
        json.dumps(cni_config(state_dir), indent=2)
    )

    started = time.monotonic()
    images = build_images()
    log(f"images ready ({time.monotonic() - started:.1f}s)")
    sandbox = image_ref(images, "pause")
    cni_bin = bin_dir.parent / "cni"
    config = state_dir / "containerd.toml"
    config.write_text(containerd_config(state_dir, cni_bin, sandbox))
    containerd_root().mkdir(parents=True, exist_ok=True)
    env_path = f"{bin_dir}:{os.environ.get('PATH', os.defpath)}"
    start_process(
        "containerd",
        ["env", f"PATH={env_path}", str(bin_dir / "containerd"), f"--config={config}",
         "--log-level=warn"],
    )
    wait_for(
        "containerd",
        lambda: _run(*ctr(state), "version", check=False, timeout=10).returncode == 0,
        60,
        ("containerd",),
    )
    import_images(ctr(state), images)

    config_path = state_dir / "kubelet-config.yaml"
    config_path.write_text(json.dumps(kubelet_config(state_dir, pki, ports), indent=2))
    labels = ",".join(f"{k}={v}" for k, v in sorted(pool.labels().items()))
    start_process(
        "kubelet",
        [
            str(bin_dir / "kubelet"),
            f"--config={config_path}",
            f"--kubeconfig={kubeconfigs['kubelet']}",
            f"--root-dir={state_dir / 'kubelet'}",
            f"--cert-dir={state_dir / 'kubelet' / 'pki'}",
            f"--hostname-override={pool.node_name}",
            f"--node-ip={netrule.NODE_IP}",
            f"--node-labels={labels}",
            "--v=1",
        ],
    )
    start_process(
        "kube-proxy",
        [
            str(bin_dir / "kube-proxy"),
            f"--kubeconfig={kubeconfigs['kube-proxy']}",
            "--proxy-mode=nftables",
            f"--hostname-override={pool.node_name}",
            f"--cluster-cidr={netrule.HARNESS_RANGES[0]}",
            f"--nodeport-addresses={netrule.NODE_IP}/32",
            f"--healthz-bind-address=127.0.0.1:{ports['kube_proxy_healthz']}",
            f"--metrics-bind-address=127.0.0.1:{ports['kube_proxy_metrics']}",
            # Leave the machine's conntrack settings alone.
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--v=1",
        ],
    )
    if pool.gpus:
        start_process(
            "gpu-device-plugin",
            [
                str(bin_dir / "gpu-device-plugin"),
                f"--count={pool.gpus}",
                f"--node={pool.node_name}",
                f"--owner={state_dir}",
            ],
        )


def node_ready(kubectl: list[str], pool: Pool) -> bool:
    result = _run(*kubectl, "get", "node", pool.node_name, "-o", "json", check=False)
    if result.returncode != 0:
        return False
    node = json.loads(result.stdout)
    ready = any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in node.get("status", {}).get("conditions", [])
    )
    gpus = node.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu", "0")
    return ready and int(gpus) == pool.gpus


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _wait_gone(pids: Iterable[int], timeout: float, alive: Callable[[int], bool]) -> list[int]:
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def shim_pids(state_dir: Path) -> list[int]:
    """containerd-shim-runc-v2 processes of this node's containerd."""
    marker = str(socket_dir(state_dir)).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and marker in cmdline:
            found.append(int(proc.name))
    return found


def stop(
    state: dict[str, Any],
    bin_dir: Path | None,
    ours: dict[str, int],
    alive: Callable[[int], bool],
) -> None:
    """Stop the real node and undo everything :func:`prepare_host` and the node changed."""
    node = state.get("realnode")
    if node is None:
        return
    state_dir = Path(state["state_dir"])
    sockets = socket_dir(state_dir)

    # 1. No new pods: the kubelet, kube-proxy and the plugin go first.
    first = [ours[n] for n in ("gpu-device-plugin", "kube-proxy", "kubelet") if n in ours]
    _signal_all(first, signal.SIGTERM)
    _signal_all(_wait_gone(first, 15, alive), signal.SIGKILL)

    # 2. Every pod sandbox through the CRI: containers stop, CNI DEL releases the
    # veth and the address, containerd unmounts the rootfs and the netns.
    has_crictl = bin_dir is not None and (bin_dir / "crictl").exists()
    if has_crictl and "containerd" in ours and alive(ours["containerd"]):
        with contextlib.suppress(subprocess.TimeoutExpired):
            _run(*crictl(state), "--timeout=20s", "rmp", "--all", "--force",
                 check=False, timeout=90)

    # 3. containerd, then any shim or container process it left.
    if "containerd" in ours:
        _signal_all([ours["containerd"]], signal.SIGTERM)
        _signal_all(_wait_gone([ours["containerd"]], 15, alive), signal.SIGKILL)
    leftovers = shim_pids(state_dir)
    owner = _current_owner()
    machine_node_is_ours = owner is None or owner == str(state_dir)
    for cgroup in kubepods_cgroups() if machine_node_is_ours else []:
        leftovers += _cgroup_pids(cgroup)
    _signal_all(leftovers, signal.SIGKILL)
    _wait_gone(leftovers, 10, alive)
    for cgroup in kubepods_cgroups() if machine_node_is_ours else []:
        with contextlib.suppress(OSError):
            cgroup.rmdir()

    # 4. Mounts: volumes, rootfs overlays, netns bind mounts, shm.
    roots = [state_dir, containerd_root(), sockets, Path("/var/lib/kubelet")]
    for point in mounts_under(roots):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)



def undo_host(state: dict[str, Any]) -> None:
    """Undo what :func:`prepare_host` and the node changed on the machine.

    Runs after every process is gone, the API server included: the guard table
    keeps its port off other interfaces until then. Skipped when another live
    cluster owns the real node (a stale state directory must not tear down a
    node it does not own).
    """
    node = state.get("realnode")
    if node is None:
        return
    state_dir = Path(state["state_dir"])
    sockets = socket_dir(state_dir)
    owner = _current_owner()
    if owner is not None and owner != str(state_dir):
        log(f"the real node belongs to {owner}: leaving the machine's network alone")
        shutil.rmtree(sockets, ignore_errors=True)
        return

    # 5. Network: veths left on the bridge, the bridge, our route and tables.
    for veth in veths_on_bridge():
        _run("ip", "link", "delete", veth, check=False)
    if bridge_exists():
        _run("ip", "link", "delete", netrule.BRIDGE, check=False)
    # The guard's and kube-proxy's tables are ours by name; iptables-nft's are
    # removed only when they did not exist before the node started.
    before = {tuple(t) for t in node.get("tables_before", [])}
    present = nft_tables()
    for family, table in (GUARD_TABLE, *KUBE_PROXY_TABLES, *IPTABLES_TABLES):
        ours_by_name = (family, table) in (GUARD_TABLE, *KUBE_PROXY_TABLES)
        if (family, table) in present and (ours_by_name or (family, table) not in before):
            _run("nft", "delete", "table", family, table, check=False)

    # 6. Kernel settings back as they were.
    for name, value in node.get("sysctls", {}).items():
        if read_sysctls().get(name) != value:
            _write_sysctl(name, value)

    # 7. Paths outside the state directory.
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and str(state_dir) in os.readlink(link):
                    link.unlink()
    with contextlib.suppress(OSError):
        (DEVICE_PLUGIN_DIR / "turnpike-gpu.sock").unlink()
    for path in node.get("paths_created", []):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(sockets, ignore_errors=True)
    with contextlib.suppress(OSError):
        sockets.parent.rmdir()
    with contextlib.suppress(OSError):
        if OWNER_FILE.read_text().strip() == str(state_dir):
            OWNER_FILE.unlink()


def machine_paths(state_dir: Path) -> set[str]:
    """The paths outside the state directory that a real node creates, present now."""
    paths = (Path("/var/lib/kubelet"), RUN_CONTAINERD, OWNER_FILE, socket_dir(state_dir))
    return {str(p) for p in paths if p.exists()}


def residue(
    state_dir: Path,
    sysctls_before: dict[str, str],
    tables_before: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
    paths_before: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """What a stopped real node left on the machine (empty when nothing): for tests.
    ``tables_before`` and ``paths_before``: nftables tables and :func:`machine_paths`
    that existed before the cluster started (they are not the cluster's to remove)."""
    found: list[str] = []
    roots = [state_dir, containerd_root(), socket_dir(state_dir), Path("/var/lib/kubelet")]
    found += [f"mount {m}" for m in mounts_under(roots)]
    if bridge_exists():
        found.append(f"bridge {netrule.BRIDGE}")
    found += [f"veth {v}" for v in veths_on_bridge()]
    links = _run("ip", "-j", "link", "show", "type", "veth", check=False).stdout
    with contextlib.suppress(json.JSONDecodeError):
        found += [f"veth {link['ifname']}" for link in json.loads(links or "[]")]
    netns = state_dir / "containerd-state" / "netns"
    if netns.exists() and any(netns.iterdir()):
        found.append(f"netns files in {netns}")
    found += [f"netns {n}" for n in _run("ip", "netns", "list", check=False).stdout.split()]
    tables = nft_tables()
    for t in (GUARD_TABLE, *KUBE_PROXY_TABLES):
        if t in tables:
            found.append(f"nftables table {t[0]} {t[1]}")
    now = read_sysctls()
    found += [
        f"sysctl {k}={now.get(k)} (was {v})" for k, v in sysctls_before.items() if now.get(k) != v
    ]
    found += [f"cgroup {c}" for c in kubepods_cgroups()]
    found += [f"process {p}" for p in shim_pids(state_dir)]
    found += sorted(machine_paths(state_dir) - set(paths_before))
    tables = nft_tables()
    found += [f"nftables table {f} {t}" for f, t in IPTABLES_TABLES if (f, t) in tables
              and (f, t) not in tables_before]
    return found


def container_pid(state: dict[str, Any], container_id: str) -> int:
    """The host PID of a container's main process (``containerd://ID`` or ``ID``),
    for fault tests that kill it from outside, as the kernel's OOM killer would."""
    cid = container_id.split("://", 1)[-1]
    out = _run(*crictl(state), "inspect", cid).stdout
    pid = int(json.loads(out)["info"]["pid"])
    if pid <= 1:
        # An exited container reports pid 0: never hand that to kill(), which would
        # signal the caller's whole process group.
        raise ProcessLookupError(f"container {cid} has no running process (pid {pid})")
    return pid

