"""The network rule: every address the suite's workloads got is loopback."""

from __future__ import annotations

import ipaddress

import pytest

from hack.kubectl import Kubectl


@pytest.mark.cluster
@pytest.mark.after_all
def test_every_node_pod_and_service_address_is_loopback(kubectl: Kubectl) -> None:
    def loopback(address: str | None) -> bool:
        return address in (None, "", "None") or ipaddress.ip_address(address).is_loopback

    offenders: list[str] = []
    for node in kubectl.items("nodes"):
        for address in node["status"].get("addresses", []):
            if address["type"].endswith("IP") and not loopback(address["address"]):
                offenders.append(f"node/{node['metadata']['name']} {address}")
    pods = kubectl.items("pods", "--all-namespaces")
    for pod in pods:
        status = pod.get("status", {})
        addresses = [status.get("podIP"), status.get("hostIP")]
        addresses += [ip["ip"] for ip in status.get("podIPs", []) + status.get("hostIPs", [])]
        offenders += [f"pod/{pod['metadata']['name']} {a}" for a in addresses if not loopback(a)]
    services = kubectl.items("services", "--all-namespaces")
    for service in services:
        for ip in service["spec"].get("clusterIPs", []):
            if not loopback(ip):
                offenders.append(f"service/{service['metadata']['name']} {ip}")
    assert services, "expected at least the kubernetes Service"
    assert not offenders, "non-loopback addresses:\n" + "\n".join(offenders)
