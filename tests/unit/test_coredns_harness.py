"""The local cluster's DNS harness (hack/coredns.py) without a cluster: its Corefile,
its DNS wire code, its port check, and what the real node's kubelet and guard get."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from hack import coredns, netrule, realnode


def test_reverse_zones_cover_exactly_the_harness_ranges() -> None:
    assert coredns.reverse_zones() == ["18.198.in-addr.arpa", "19.198.in-addr.arpa"]
    assert coredns.reverse_zones(["10.0.0.0/8", "192.168.4.0/22"]) == [
        "10.in-addr.arpa",
        "4.168.192.in-addr.arpa",
        "5.168.192.in-addr.arpa",
        "6.168.192.in-addr.arpa",
        "7.168.192.in-addr.arpa",
    ]


def test_corefile_serves_the_cluster_and_forwards_nothing() -> None:
    text = coredns.corefile(Path("/k/kubeconfig"), [netrule.CLUSTER_DNS_IP], 53, 20001)
    words = text.split()
    assert "forward" not in words and "proxy" not in words
    assert text.count(f"bind {netrule.CLUSTER_DNS_IP}\n") == 2
    assert "cluster.local:53 18.198.in-addr.arpa:53 19.198.in-addr.arpa:53 {" in text
    assert "kubernetes cluster.local 18.198.in-addr.arpa 19.198.in-addr.arpa {" in text
    assert "kubeconfig /k/kubeconfig" in text and "pods insecure" in text
    assert "fallthrough" not in text
    # Everything else: one catch-all block that answers NXDOMAIN itself.
    catch_all = text.split(".:53 {", 1)[1]
    assert "rcode NXDOMAIN" in catch_all and "kubernetes" not in catch_all
    assert "ready 127.0.0.1:20001" in text


def _reply(query: bytes, rcode: int, address: str | None) -> bytes:
    ident = query[:2]
    question = query[12:]
    answers = 1 if address else 0
    header = ident + struct.pack("!HHHHH", 0x8400 | 0x0100 | 0x0080 | rcode, 1, answers, 0, 0)
    body = header + question
    if address:
        body += b"\xc0\x0c" + struct.pack("!HHIH", coredns.TYPE_A, 1, 5, 4)
        body += socket.inet_aton(address)
    return body


def test_queries_and_answers_round_trip() -> None:
    query = coredns.encode_query("kubernetes.default.svc.cluster.local", coredns.TYPE_A, 4660)
    assert query[:2] == b"\x12\x34"
    assert b"\x0akubernetes\x07default\x03svc\x07cluster\x05local\x00" in query
    answer = coredns.decode_answer(_reply(query, 0, "198.19.0.1"), 4660)
    assert answer.rcode == "NOERROR" and answer.authoritative
    assert answer.addresses() == ["198.19.0.1"]
    missing = coredns.decode_answer(_reply(query, 3, None), 4660)
    assert (missing.rcode, missing.records) == ("NXDOMAIN", [])


def test_listeners_sees_wildcard_and_exact_sockets_on_the_port(tmp_path: Path) -> None:
    header = "  sl  local_address rem_address   st\n"
    # 198.18.0.1:53 UDP, 0.0.0.0:53 TCP listening, 127.0.0.1:53 UDP (another
    # address), and a TCP connection (not listening) from port 53.
    (tmp_path / "udp").write_text(
        header + "0: 010012C6:0035 00000000:0000 07\n1: 0100007F:0035 00000000:0000 07\n"
    )
    (tmp_path / "tcp").write_text(
        header + "0: 00000000:0035 00000000:0000 0A\n1: 010012C6:0035 020112C6:9C40 01\n"
    )
    (tmp_path / "udp6").write_text(header + "0: " + "0" * 32 + ":0035 " + "0" * 32 + ":0000 07\n")
    found = coredns.listeners("198.18.0.1", 53, tmp_path)
    assert found == ["udp 198.18.0.1:53", "tcp 0.0.0.0:53", "udp6 :::53"]
    assert coredns.listeners("198.18.0.1", 54, tmp_path) == []


def test_the_kubelet_names_the_cluster_dns_and_the_guard_opens_only_its_socket(
    tmp_path: Path,
) -> None:
    config = realnode.kubelet_config(
        tmp_path, tmp_path, {"kubelet": 10250, "kubelet_healthz": 20002}
    )
    assert config["clusterDNS"] == [netrule.CLUSTER_DNS_IP]
    assert config["clusterDomain"] == coredns.CLUSTER_DOMAIN
    assert netrule.allowed(netrule.CLUSTER_DNS_IP)

    ruleset = realnode.guard_ruleset().splitlines()
    lines = [line.strip() for line in ruleset if line.strip() and not line.strip().startswith("#")]
    bridge, dns = netrule.BRIDGE, netrule.CLUSTER_DNS_IP
    opening = [
        f'iifname "{bridge}" ip daddr {dns} udp dport 53 socket wildcard 0 accept',
        f'iifname "{bridge}" ip daddr {dns} tcp dport 53 socket wildcard 0 accept',
        f'iifname "{bridge}" ip daddr {dns} tcp dport 53 ct state established accept',
    ]
    closing = [f'iifname "{bridge}" udp dport 53 drop', f'iifname "{bridge}" tcp dport 53 drop']
    assert all(rule in lines for rule in (*opening, *closing))
    assert max(map(lines.index, opening)) < min(map(lines.index, closing))
    # Before the drops, the input chain accepts loopback and the DNS socket only.
    start = lines.index("chain input {") + 2  # after the hook line
    assert lines[start : lines.index(closing[0])] == ['iifname "lo" accept', *opening]
