"""Cluster DNS on the real node: pods find Services and each other by name.

The local cluster runs CoreDNS (``hack/coredns.py``) as a host process on the
real node's bridge address, and the kubelet names it in every pod's
resolv.conf. A LeaderWorkerSet's pods find their leader the way these pods do:
``<hostname>.<subdomain>.<namespace>`` through the headless Service. Nothing is
forwarded: a name outside the cluster is NXDOMAIN at once, on this machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from hack import coredns, localcluster, netrule, realnode
from hack.kubectl import Kubectl, eventually
from tests.realpods import triton_image

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("real_node")]

# getaddrinfo in a pod, for each name on the command line: its IPv4 addresses,
# or the gaierror number (EAI_NONAME for NXDOMAIN, EAI_AGAIN for a timeout).
PROBE = """
import json, socket, sys
out = {}
for name in sys.argv[1:]:
    try:
        found = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        out[name] = sorted({a[4][0] for a in found})
    except socket.gaierror as error:
        out[name] = error.errno
print(json.dumps(out))
"""

# One A query over TCP (what a resolver falls back to for a truncated answer):
# the rcode and the answer's address.
TCP_PROBE = """
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
labels = b"".join(bytes([len(l)]) + l.encode() for l in name.split("."))
query = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + labels + b"\\0" + struct.pack("!HH", 1, 1)
with socket.create_connection((server, 53), timeout=5) as conn:
    conn.sendall(struct.pack("!H", len(query)) + query)
    data = b""
    while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
        data += conn.recv(4096)
reply = data[2:]
ancount = struct.unpack("!H", reply[6:8])[0]
print(reply[3] & 15, socket.inet_ntoa(reply[-4:]) if ancount == 1 else "")
"""

OUTSIDE = ("example.com", "turnpike-no-such-host.invalid")
PLUGINS = {"bind", "ready", "errors", "log", "cache", "template", "kubernetes"}


def sleeper(name: str, node: str, **spec: Any) -> dict[str, Any]:
    """A pod on the real node (no GPU) with the repository's CPU image, which has python3."""
    labels = spec.pop("labels", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists"},
                {"key": realnode.REAL_NODE_TAINT, "operator": "Exists"},
            ],
            "terminationGracePeriodSeconds": 1,
            "enableServiceLinks": False,
            "containers": [{"name": "main", "image": triton_image(), "command": ["sleep", "300"]}],
            **spec,
        },
    }


def running(kube: Kubectl, name: str) -> dict[str, Any] | None:
    pod: dict[str, Any] = kube.get("pod", name)
    return pod if pod["status"].get("phase") == "Running" else None


def resolve(kube: Kubectl, pod: str, *names: str) -> dict[str, list[str] | int]:
    out = kube.run("exec", pod, "--", "python3", "-c", PROBE, *names, timeout=90).stdout
    answers: dict[str, list[str] | int] = json.loads(out)
    return answers


def test_pods_resolve_services_and_headless_peers_by_name(
    kubectl: Kubectl, kube: Kubectl, namespace: str, real_node: str
) -> None:
    # A headless Service like the one LWS makes for a group's pods.
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "peers"},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "dns-peer"},
                "publishNotReadyAddresses": True,
                "ports": [{"name": "peer", "port": 8080}],
            },
        },
        sleeper(
            "peer", real_node, hostname="peer-0", subdomain="peers", labels={"app": "dns-peer"}
        ),
        sleeper("client", real_node),
    )
    peer = eventually("peer Running", lambda: running(kube, "peer"), timeout=120)
    eventually("client Running", lambda: running(kube, "client"), timeout=120)
    peer_ip = peer["status"]["podIP"]
    assert netrule.allowed(peer_ip)

    resolv = kube.run("exec", "client", "--", "cat", "/etc/resolv.conf").stdout
    assert f"nameserver {netrule.CLUSTER_DNS_IP}" in resolv.splitlines(), resolv
    search = f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local"
    assert any(line.startswith(search) for line in resolv.splitlines()), resolv

    kubernetes_ip = kubectl.get("service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    fqdn = f"peer-0.peers.{namespace}.svc.cluster.local"
    short = f"peer-0.peers.{namespace}"
    names = ("kubernetes.default.svc.cluster.local", "kubernetes.default", fqdn, short, *OUTSIDE)
    # The peer's name appears once its EndpointSlice reaches CoreDNS (a watch, then
    # at most the 5 s negative TTL of the cache).
    answers = eventually(
        f"{fqdn} resolving in the client pod",
        lambda: (lambda a: a if a.get(fqdn) == [peer_ip] else None)(
            resolve(kube, "client", *names)
        ),
        timeout=60,
        interval=1,
    )
    started = time.monotonic()
    answers = resolve(kube, "client", *names)
    took = time.monotonic() - started

    # (a) the kubernetes Service, by full name and through the search path.
    assert answers["kubernetes.default.svc.cluster.local"] == [kubernetes_ip], answers
    assert answers["kubernetes.default"] == [kubernetes_ip], answers
    # (b) a pod of a headless Service by hostname and subdomain, full and short.
    assert answers[fqdn] == [peer_ip], answers
    assert answers[short] == [peer_ip], answers
    # (c) nothing outside the cluster: a definite "no such name", not a timeout.
    for name in OUTSIDE:
        assert answers[name] == socket.EAI_NONAME, (name, answers[name])
    # Every query was answered at once (a lost one costs the resolver 5 s).
    assert took < 5, f"the lookups took {took:.1f}s"
    # TCP too, through the guard's opening for the DNS server's own socket.
    argv = ["exec", "client", "--", "python3", "-c", TCP_PROBE, fqdn, netrule.CLUSTER_DNS_IP]
    assert kube.run(*argv).stdout.split() == ["0", peer_ip]


def test_cluster_dns_answers_on_the_bridge_only_and_forwards_nothing(kubectl: Kubectl) -> None:
    """What every pod's resolver asks: CoreDNS on the bridge address, UDP and TCP,
    with no plugin that could send a query anywhere, and the guard's narrow opening."""
    state = localcluster._read_state()
    argv = state["argv"][localcluster.CLUSTER_DNS]
    pid = state["pids"][localcluster.CLUSTER_DNS]
    assert localcluster.process_alive(pid)
    compiled = subprocess.run(
        [argv[0], "-plugins"], capture_output=True, text=True, check=True
    ).stdout
    # metadata, prometheus and transfer come in as libraries of cache and
    # kubernetes; main.go's directive list leaves them out of any Corefile.
    assert set(compiled.split()) - {"metadata", "prometheus", "transfer"} == PLUGINS, compiled
    corefile = Path(argv[argv.index("-conf") + 1]).read_text()
    binds = {
        line.split(None, 1)[1] for line in corefile.splitlines() if line.strip().startswith("bind ")
    }
    assert binds == {netrule.CLUSTER_DNS_IP}, corefile

    # Bound to the bridge address, never a wildcard that a pod could reach elsewhere.
    bound = coredns.listeners(netrule.CLUSTER_DNS_IP, coredns.DNS_PORT)
    assert bound and all(netrule.CLUSTER_DNS_IP in entry for entry in bound), bound

    server, port = netrule.CLUSTER_DNS_IP, coredns.DNS_PORT
    kubernetes_ip = kubectl.get("service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    for tcp in (False, True):
        answer = coredns.query("kubernetes.default.svc.cluster.local", server, port, tcp=tcp)
        assert (answer.rcode, answer.addresses()) == ("NOERROR", [kubernetes_ip])
        assert coredns.query("example.com", server, port, tcp=tcp).rcode == "NXDOMAIN"
    reverse = ".".join(reversed(kubernetes_ip.split("."))) + ".in-addr.arpa"
    answer = coredns.query(reverse, server, port, coredns.TYPE_PTR)
    assert answer.records == [(coredns.TYPE_PTR, "kubernetes.default.svc.cluster.local.")]
    outside = coredns.query("8.8.8.8.in-addr.arpa", server, port, coredns.TYPE_PTR)
    assert outside.rcode == "NXDOMAIN"

    family, table = realnode.GUARD_TABLE
    ruleset = subprocess.run(
        ["nft", "list", "table", family, table], capture_output=True, text=True, check=True
    ).stdout
    bridge = netrule.BRIDGE
    opening = [
        f'iifname "{bridge}" ip daddr {server} {proto} dport {port} socket wildcard 0 accept'
        for proto in ("udp", "tcp")
    ]
    opening.append(
        f'iifname "{bridge}" ip daddr {server} tcp dport {port} ct state established accept'
    )
    closing = [f'iifname "{bridge}" {proto} dport 53 drop' for proto in ("udp", "tcp")]
    lines = [line.strip() for line in ruleset.splitlines()]
    for rule in (*opening, *closing):
        assert rule in lines, f"guard rule missing: {rule}"
    assert max(lines.index(r) for r in opening) < min(lines.index(r) for r in closing)
