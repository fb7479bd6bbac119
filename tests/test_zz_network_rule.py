"""The network rule: every address the suite's workloads got is loopback or a harness range.

The harness ranges (hack/netrule.py) exist only on the real node's bridge, and
an nftables table keeps them there while the cluster runs.
"""

from __future__ import annotations

import subprocess

import pytest

from hack import localcluster, netrule, realnode
from hack.kubectl import Kubectl


@pytest.mark.cluster
@pytest.mark.after_all
def test_every_node_pod_and_service_address_is_loopback_or_harness(kubectl: Kubectl) -> None:
    def ok(address: str | None) -> bool:
        return address in (None, "", "None") or netrule.allowed(str(address))

    offenders: list[str] = []
    for node in kubectl.items("nodes"):
        for address in node["status"].get("addresses", []):
            if address["type"].endswith("IP") and not ok(address["address"]):
                offenders.append(f"node/{node['metadata']['name']} {address}")
    pods = kubectl.items("pods", "--all-namespaces")
    for pod in pods:
        status = pod.get("status", {})
        addresses = [status.get("podIP"), status.get("hostIP")]
        addresses += [ip["ip"] for ip in status.get("podIPs", []) + status.get("hostIPs", [])]
        offenders += [f"pod/{pod['metadata']['name']} {a}" for a in addresses if not ok(a)]
    services = kubectl.items("services", "--all-namespaces")
    for service in services:
        for ip in service["spec"].get("clusterIPs", []):
            if not ok(ip):
                offenders.append(f"service/{service['metadata']['name']} {ip}")
    for slice_ in kubectl.items("endpointslices", "--all-namespaces"):
        for endpoint in slice_.get("endpoints") or []:
            offenders += [
                f"endpointslice/{slice_['metadata']['name']} {a}"
                for a in endpoint.get("addresses", [])
                if not ok(a)
            ]
    assert services, "expected at least the kubernetes Service"
    assert not offenders, "addresses outside loopback and the harness ranges:\n" + "\n".join(
        offenders
    )


@pytest.mark.cluster
@pytest.mark.after_all
def test_the_guard_keeps_harness_ranges_on_the_bridge(kubectl: Kubectl) -> None:
    """With a real node up, the live guard table drops what must not leave or enter."""
    real = kubectl.items("nodes", "-l", "turnpike.dev/node-kind=real")
    if not real:
        pytest.skip("no real node in this cluster")
    family, table = realnode.GUARD_TABLE
    ruleset = subprocess.run(
        ["nft", "list", "table", family, table], capture_output=True, text=True, check=True
    ).stdout
    bridge = netrule.BRIDGE
    for range_ in netrule.HARNESS_RANGES:
        assert range_ in ruleset
    for rule in (
        f'iifname "{bridge}" oifname "{bridge}" accept',  # pod to pod
        f'iifname "{bridge}" drop',  # forwarded off the bridge, any family, any source
        f'oifname "{bridge}" drop',
        "ct original ip saddr @harness drop",  # judged before NAT
        f'iifname "{bridge}" udp dport 53 drop',  # no resolver for pods
        "tcp dport @guarded_ports drop",
    ):
        assert rule in ruleset, f"guard rule missing: {rule}"
    ports = localcluster._read_state()["ports"]
    # set guarded_ports { type inet_service  elements = { 33681, 41000 } }
    elements = ruleset.split("set guarded_ports", 1)[1].split("}", 1)[0]
    assert str(ports["apiserver"]) in elements and str(ports["etcd"]) in elements
