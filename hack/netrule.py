"""The network rule of the local cluster, as data: the only addresses anything here hands out.

Everything the control plane and the kwok nodes hand out is loopback. The real
node's pods cannot use loopback (inside a pod's network namespace 127.0.0.0/8
is the pod's own ``lo``), so they, the node's own address and the Service range
live in ``HARNESS_RANGES``: addresses that exist only on the harness bridge
``BRIDGE`` that ``hack/realnode.py`` creates on this machine. 198.18.0.0/15 is
the range IANA reserves for network benchmarking (RFC 2544): no real network
this machine is on uses it, and an nftables table drops any packet from or to
it that would leave through an interface other than the bridge. No rule here
ever masquerades.
"""

from __future__ import annotations

import ipaddress

LOOPBACK = "127.0.0.0/8"
HARNESS_RANGES = ("198.18.0.0/15",)

BRIDGE = "tpbr0"
# The real node's own address (kubelet, kube-proxy, the API server's advertised
# address) and the pods' gateway: one address on the bridge.
NODE_IP = "198.18.0.1"
POD_CIDR = "198.18.0.0/16"
POD_RANGE_START = "198.18.1.1"
POD_RANGE_END = "198.18.255.254"
# The cluster's DNS server (hack/coredns.py), a host process: the kubelet
# writes it into every pod's resolv.conf. It is the node's own address, so
# queries never leave the bridge (and no Service or kube-proxy rule is needed).
CLUSTER_DNS_IP = NODE_IP
SERVICE_CIDR = "198.19.0.0/16"
# The first address of SERVICE_CIDR, which the API server gives the
# `kubernetes` Service; its serving certificate names it.
KUBERNETES_SERVICE_IP = "198.19.0.1"

ALLOWED = (LOOPBACK, *HARNESS_RANGES)


def allowed(address: str) -> bool:
    """Whether ``address`` is loopback or in the harness's own ranges."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        return ip.is_loopback
    return any(ip in ipaddress.ip_network(net) for net in ALLOWED)


def no_proxy() -> str:
    """NO_PROXY for every client of the local cluster: never send these to a proxy."""
    return ",".join(["127.0.0.1", "localhost", *HARNESS_RANGES, NODE_IP])
