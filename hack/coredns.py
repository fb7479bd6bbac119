"""The local cluster's DNS: CoreDNS, built from Go modules and run as a host process.

Pods find each other by name (``<svc>.<ns>.svc.cluster.local``, and
``<hostname>.<subdomain>.<ns>`` through the headless Service a
LeaderWorkerSet makes), so the local cluster runs the DNS server every real
cluster runs. CoreDNS is built from the module pinned in ``hack/coredns/go.mod``
with only the plugins ``hack/coredns/main.go`` lists (cached per machine under
``~/.cache/turnpike/coredns-<key>/``, like the rest of the cluster).

The network rule (``hack/netrule.py``) holds: CoreDNS answers from the API
server (on 127.0.0.1) and from nothing else. It has no forward plugin compiled
in; names of the cluster zone and of the harness ranges' reverse zones come
from the ``kubernetes`` plugin, and every other name gets NXDOMAIN from a
``template``, so no query ever leaves the machine. It listens on the real
node's bridge address (``netrule.CLUSTER_DNS_IP``), port 53, which the kubelet
writes into every pod's resolv.conf (``clusterDNS``); the guard table of
``hack/realnode.py`` lets pods reach port 53 at that address only, and only
while the socket there is bound to that address (this process), not a wildcard.

    server = coredns.start(kubeconfig, "127.0.0.1", port)   # builds on first use
    coredns.query("kubernetes.default.svc.cluster.local", "127.0.0.1", port)
    server.stop()

``hack/localcluster.py`` runs it as a cluster component (``command()``,
``ready()``, ``serving()``). Standard library and the Go toolchain only.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack import netrule
from hack.gobuild import GoComponent
from hack.ports import free_port

HERE = Path(__file__).resolve().parent / "coredns"
PACKAGE = "turnpike.dev/hack/coredns"
# Bump when build() changes how the binary is made (its inputs are hashed anyway).
RECIPE = 1

CLUSTER_DOMAIN = "cluster.local"
DNS_PORT = 53
# The kubernetes plugin's record TTL; the cache plugin keeps answers no longer.
TTL_S = 5

# DNS wire constants (RFC 1035).
TYPE_A = 1
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_AAAA = 28
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _log(message: str) -> None:
    print(f"[coredns {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- build


COMPONENT = GoComponent(
    name="coredns",
    directory=HERE,
    package=PACKAGE,
    binary="coredns",
    inputs=("go.mod", "go.sum", "main.go"),
    recipe=RECIPE,
    cold_build="about 2 minutes",
)


def cache_key() -> str:
    return COMPONENT.cache_key()


def build() -> Path:
    """The CoreDNS binary, built once per machine and set of inputs."""
    return COMPONENT.build()


# ---------------------------------------------------------------- configuration


def reverse_zones(ranges: Iterable[str] = netrule.HARNESS_RANGES) -> list[str]:
    """The in-addr.arpa zones that cover ``ranges`` exactly, on octet boundaries.

    198.18.0.0/15 is 18.198.in-addr.arpa and 19.198.in-addr.arpa.
    """
    zones: list[str] = []
    for text in ranges:
        network = ipaddress.IPv4Network(text)
        octets = -(-network.prefixlen // 8)
        for subnet in network.subnets(new_prefix=octets * 8):
            labels = str(subnet.network_address).split(".")[:octets]
            zones.append(".".join([*reversed(labels), "in-addr.arpa"]))
    return zones


def corefile(kubeconfig: Path, addresses: Sequence[str], port: int, ready_port: int) -> str:
    """The Corefile: the cluster's zones from its API server, NXDOMAIN for the rest."""
    zones = [CLUSTER_DOMAIN, *reverse_zones()]
    bind = " ".join(addresses)
    keys = " ".join(f"{zone}:{port}" for zone in zones)
    return f"""# The local cluster's DNS (hack/coredns.py). Nothing here forwards a query:
# the cluster's names come from its API server; every other name is NXDOMAIN.
{keys} {{
    bind {bind}
    ready 127.0.0.1:{ready_port}
    errors
    log . {{
        class denial error
    }}
    cache 30
    kubernetes {" ".join(zones)} {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl {TTL_S}
    }}
}}

.:{port} {{
    bind {bind}
    errors
    log . {{
        class denial error
    }}
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def command(binary: Path, corefile_path: Path) -> list[str]:
    """The command line of CoreDNS serving ``corefile_path``."""
    return [str(binary), "-conf", str(corefile_path)]


def listeners(address: str, port: int, proc_net: Path = Path("/proc/net")) -> list[str]:
    """Sockets of this network namespace that would take ``address``:``port``:
    bound to it or to a wildcard, UDP or listening TCP (``/proc/net/{udp,tcp}[6]``)."""
    wanted = ipaddress.ip_address(address)
    found: list[str] = []
    for name in ("udp", "tcp", "udp6", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            local, state = fields[1], fields[3]
            if name.startswith("tcp") and state != "0A":  # LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            if int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(hex_ip)
            # /proc/net prints each 32-bit word in host (little-endian) order.
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
            bound = ipaddress.ip_address(b"".join(words))
            mapped = getattr(bound, "ipv4_mapped", None)
            if bound.is_unspecified or bound == wanted or mapped == wanted:
                found.append(f"{name} {bound}:{port}")
    return found


# ---------------------------------------------------------------- a tiny DNS client


@dataclass(frozen=True)
class Answer:
    rcode: str
    # (type, value): A and AAAA as addresses, PTR as names, others as hex.
    records: list[tuple[int, str]] = field(default_factory=list)
    authoritative: bool = False

    def addresses(self) -> list[str]:
        return [value for kind, value in self.records if kind in (TYPE_A, TYPE_AAAA)]


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def _read_name(message: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` and the offset after it (following compression pointers)."""
    labels: list[str] = []
    end: int | None = None
    for _ in range(128):
        length = message[offset]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | message[offset + 1]
            continue
        if length == 0:
            return ".".join(labels) + ".", end if end is not None else offset + 1
        labels.append(message[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise ValueError("DNS name with a pointer loop")


def encode_query(name: str, qtype: int, ident: int) -> bytes:
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # RD set
    return header + _encode_name(name) + struct.pack("!HH", qtype, 1)


def decode_answer(message: bytes, ident: int) -> Answer:
    got, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", message[:12])
    if got != ident or not flags & 0x8000:
        raise ValueError("not the answer to this query")
    offset = 12
    for _ in range(qdcount):
        _, offset = _read_name(message, offset)
        offset += 4
    records: list[tuple[int, str]] = []
    for _ in range(ancount):
        _, offset = _read_name(message, offset)
        kind, _, _, length = struct.unpack("!HHIH", message[offset : offset + 10])
        offset += 10
        data = message[offset : offset + length]
        if kind == TYPE_A:
            value = str(ipaddress.IPv4Address(data))
        elif kind == TYPE_AAAA:
            value = str(ipaddress.IPv6Address(data))
        elif kind == TYPE_PTR:
            value = _read_name(message, offset)[0]
        else:
            value = data.hex()
        records.append((kind, value))
        offset += length
    rcode = RCODES.get(flags & 0xF, str(flags & 0xF))
    return Answer(rcode=rcode, records=records, authoritative=bool(flags & 0x0400))


def query(
    name: str,
    server: str,
    port: int = DNS_PORT,
    qtype: int = TYPE_A,
    *,
    tcp: bool = False,
    timeout: float = 2,
) -> Answer:
    """Ask ``server``:``port`` one question (no recursion anywhere: CoreDNS here has none)."""
    ident = secrets.randbelow(0x10000)
    payload = encode_query(name, qtype, ident)
    if tcp:
        with socket.create_connection((server, port), timeout=timeout) as conn:
            conn.sendall(struct.pack("!H", len(payload)) + payload)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = conn.recv(65535)
                if not chunk:
                    raise ConnectionError("DNS server closed the TCP connection")
                data += chunk
            return decode_answer(data[2:], ident)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, port))
        sock.send(payload)
        return decode_answer(sock.recv(65535), ident)


# ---------------------------------------------------------------- readiness


def ready(ready_port: int, timeout: float = 2) -> bool:
    """Whether the ready plugin reports every plugin ready (the kubernetes plugin
    has listed Services, EndpointSlices, Pods and Namespaces)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{ready_port}/ready", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def serving(address: str, port: int) -> bool:
    """Whether ``address``:``port`` answers for the cluster zone over UDP and TCP."""
    try:
        return all(
            query(CLUSTER_DOMAIN, address, port, TYPE_SOA, tcp=tcp, timeout=1).rcode == "NOERROR"
            for tcp in (False, True)
        )
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- a standalone server


@dataclass
class Server:
    """CoreDNS as a host process of its own (tests, probes); the local cluster
    runs it as one of its components instead."""

    process: subprocess.Popen[bytes]
    workdir: Path
    address: str
    port: int
    ready_port: int
    # Whether stop() removes workdir (start() made it).
    owns_workdir: bool = False

    @property
    def log_path(self) -> Path:
        return self.workdir / "coredns.log"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def query(self, name: str, qtype: int = TYPE_A, *, tcp: bool = False) -> Answer:
        return query(name, self.address, self.port, qtype, tcp=tcp)

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start(
    kubeconfig: Path,
    address: str = netrule.CLUSTER_DNS_IP,
    port: int = DNS_PORT,
    *,
    workdir: Path | None = None,
    timeout: float = 60,
) -> Server:
    """Build (cached) and run CoreDNS on ``address``:``port`` for the cluster of
    ``kubeconfig``; returns once it answers over UDP and TCP."""
    busy = listeners(address, port)
    if busy:
        raise RuntimeError(f"{address}:{port} is taken: {', '.join(busy)}")
    binary = build()
    owns_workdir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="turnpike-coredns-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ready_port = free_port()
    conf = workdir / "Corefile"
    conf.write_text(corefile(kubeconfig, [address], port, ready_port))
    with (workdir / "coredns.log").open("ab") as log:
        process = subprocess.Popen(
            command(binary, conf),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "NO_PROXY": netrule.no_proxy(), "no_proxy": netrule.no_proxy()},
        )
    server = Server(process, workdir, address, port, ready_port, owns_workdir)
    deadline = time.monotonic() + timeout
    while not (ready(ready_port) and serving(address, port)):
        if not server.alive() or time.monotonic() > deadline:
            exited = not server.alive()
            tail = server.log_tail()
            server.stop()
            state = "exited" if exited else f"did not answer within {timeout:.0f}s"
            raise RuntimeError(f"CoreDNS {state} before serving {address}:{port}:\n{tail}")
        time.sleep(0.2)
    _log(f"serving {address}:{port} (pid {process.pid}, log {server.log_path})")
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (cached) and print the binary's path")
    ask = sub.add_parser("query", help="ask a DNS server one question")
    ask.add_argument("name")
    ask.add_argument("--server", default=netrule.CLUSTER_DNS_IP)
    ask.add_argument("--port", type=int, default=DNS_PORT)
    ask.add_argument("--type", choices=["A", "AAAA", "PTR", "SOA"], default="A")
    ask.add_argument("--tcp", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build())
        return 0
    qtype = {"A": TYPE_A, "AAAA": TYPE_AAAA, "PTR": TYPE_PTR, "SOA": TYPE_SOA}[args.type]
    answer = query(args.name, args.server, args.port, qtype, tcp=args.tcp)
    print(json.dumps({"rcode": answer.rcode, "records": answer.records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
