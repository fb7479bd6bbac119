"""The multi-node launch contract of tritonserver-cpu, and what smoke.py needs to check it.

A multi-node replica (a LeaderWorkerSet group) is one ``mpirun`` in the leader pod that
forks the leader's own ranks and starts the others on the worker pods over ssh, each
worker pod running an unprivileged sshd as its main process. Every pod of the
deployment mounts one Secret (``MPI_DIR``, defaultMode 0440, fsGroup 1000) holding the
client key, its public key as ``authorized_keys``, the shared host key and a
``known_hosts`` line ``* ssh-ed25519 ...`` for strict host key checking.
``worker_argv`` and ``leader_argv`` are the argvs the operator renders, verbatim;
smoke.py runs them in two runc containers of the image (uid 1000, every capability
dropped, no new privileges), each in its own network namespace, the two joined by a
veth pair (``veth_pair``) and nothing else.

Addresses: ``SMOKE_CIDR`` is a /30 of the harness range (hack/netrule.py) inside the pod
CIDR's first /24, below ``POD_RANGE_START``, and not ``NODE_IP``: no pod of the real
node ever gets one of its addresses. The two namespaces are not connected to the host,
the harness bridge or any route: nothing they send can leave them, let alone the machine.
Standard library only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hack import netrule

MPI_DIR = "/etc/turnpike/mpi"
SSH_PORT = 2222
CLIENT_KEY = f"{MPI_DIR}/id_ed25519"
AUTHORIZED_KEYS = f"{MPI_DIR}/authorized_keys"
HOST_KEY = f"{MPI_DIR}/ssh_host_ed25519_key"
KNOWN_HOSTS = f"{MPI_DIR}/known_hosts"
# What a kubelet does to a Secret volume's files with defaultMode 0440 and fsGroup 1000.
SECRET_MODE = 0o440
SECRET_GID = 1000

# The worker container's command: sshd in the foreground, logging to stderr, no
# configuration file, only the key set. As a non-root user sshd needs no privilege
# separation directory or user and authenticates only its own user (the image's, uid 1000).
WORKER_ARGV = [
    "/usr/sbin/sshd",
    "-D",
    "-e",
    "-f",
    "/dev/null",
    "-p",
    str(SSH_PORT),
    "-o",
    f"HostKey={HOST_KEY}",
    "-o",
    f"AuthorizedKeysFile={AUTHORIZED_KEYS}",
    "-o",
    "StrictModes=no",
    "-o",
    "UsePAM=no",
    "-o",
    "PidFile=none",
    "-o",
    "PasswordAuthentication=no",
    "-o",
    "KbdInteractiveAuthentication=no",
    # Not needed, but nothing uses them: no root, no forwarding.
    "-o",
    "PermitRootLogin=no",
    "-o",
    "AllowTcpForwarding=no",
    "-o",
    "X11Forwarding=no",
]

# ssh's options, for the wait below and for mpirun's launcher alike.
SSH_ARGS = (
    f"-p {SSH_PORT} -i {CLIENT_KEY} -o UserKnownHostsFile={KNOWN_HOSTS}"
    " -o StrictHostKeyChecking=yes -o BatchMode=yes"
)

# The leader container's command is `sh -c WAIT_SCRIPT turnpike-mpi WORKER... -- mpirun ...`:
# wait until every worker's sshd accepts the key (a bounded number of tries, each at most
# ConnectTimeout + 2 s), then exec mpirun. A worker still not reachable after the last try
# is reported with ssh's last error, and the container exits 1 (the kubelet restarts it).
WAIT_SCRIPT = f"""\
tries=${{TURNPIKE_MPI_WAIT_TRIES:-60}}
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
  n=1
  until err=$(ssh {SSH_ARGS} -o ConnectTimeout=5 "$1" true 2>&1 </dev/null); do
    if [ "$n" -ge "$tries" ]; then
      echo "turnpike-mpi: worker $1: no ssh on port {SSH_PORT} after $n tries: $err" >&2
      exit 1
    fi
    [ "$n" = 1 ] && echo "turnpike-mpi: waiting for worker $1 (up to $tries tries): $err" >&2
    n=$((n + 1))
    sleep 2
  done
  shift
done
[ "$1" = -- ] && shift
exec "$@"
"""

# mpirun's options beyond the contract's: the ssh launcher's agent and options, and
# every orted started from the leader itself (no tree spawn: the workers never ssh).
MPIRUN_MCA = [
    ("plm_rsh_agent", "ssh"),
    ("plm_rsh_args", SSH_ARGS),
    ("plm_rsh_no_tree_spawn", "1"),
    ("orte_keep_fqdn_hostnames", "1"),
]


def leader_argv(
    hosts: list[str], slots: int, program: list[str], env: list[str], *, workers: list[str]
) -> list[str]:
    """The leader container's command: wait for ``workers``, then one mpirun of
    ``len(hosts) * slots`` ranks, each its own ``-n 1`` block (MPMD), ranks 0..slots-1 on
    ``hosts[0]`` (the leader itself: forked, never ssh) and the rest on the workers in order."""
    mpirun = ["mpirun", "--allow-run-as-root", "--bind-to", "none"]
    mpirun += ["--host", ",".join(f"{host}:{slots}" for host in hosts)]
    for name, value in MPIRUN_MCA:
        mpirun += ["-mca", name, value]
    # -x is per application context: in MPMD every block names the variables it exports (a
    # -x before the first block reaches only that block's rank).
    exports = [arg for name in env for arg in ("-x", name)]
    blocks: list[str] = []
    for _ in range(len(hosts) * slots):
        blocks += [*([":"] if blocks else []), "-n", "1", *exports, *program]
    return ["/bin/sh", "-c", WAIT_SCRIPT, "turnpike-mpi", *workers, "--", *mpirun, *blocks]


def write_key_set(directory: Path, gid: int = SECRET_GID) -> None:
    """The key set, laid out as a kubelet lays out a Secret volume (``..data`` and the
    files as symlinks into a timestamped directory), owned by root, group ``gid``, 0440."""
    with tempfile.TemporaryDirectory(prefix="turnpike-mpi-keys-") as tmp:
        for name in ("client", "host"):
            keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"turnpike-mpi-{name}"]
            subprocess.run([*keygen, "-f", f"{tmp}/{name}"], check=True, capture_output=True)
        host_public = Path(f"{tmp}/host.pub").read_text().split()
        files = {
            "id_ed25519": Path(f"{tmp}/client").read_text(),
            "authorized_keys": Path(f"{tmp}/client.pub").read_text(),
            "ssh_host_ed25519_key": Path(f"{tmp}/host").read_text(),
            "known_hosts": f"* {host_public[0]} {host_public[1]}\n",
        }
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / "..2025_01_01_00_00_00.000000001"
    stamp.mkdir()
    for name, text in files.items():
        path = stamp / name
        path.write_text(text)
        os.chown(path, 0, gid)
        os.chmod(path, SECRET_MODE)
        (directory / name).symlink_to(f"..data/{name}")
    (directory / "..data").symlink_to(stamp.name)
    for d in (directory, stamp):
        os.chown(d, 0, gid)
        os.chmod(d, 0o2755)


# A /30 no pod of the real node ever gets (see the module's docstring).
SMOKE_CIDR = "198.18.0.252/30"
_NETNS_PREFIX = "tpmpi-"


def _check_cidr() -> tuple[str, str]:
    net = ipaddress.IPv4Network(SMOKE_CIDR)
    first, second = (str(ip) for ip in net.hosts())
    assert all(netrule.allowed(ip) for ip in (first, second)), SMOKE_CIDR
    assert ipaddress.IPv4Address(netrule.NODE_IP) not in net
    assert net.broadcast_address < ipaddress.IPv4Address(netrule.POD_RANGE_START)
    return first, second


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    removed = []
    for line in out.splitlines():
        match = re.match(rf"({_NETNS_PREFIX}(\d+)-[lw])\b", line)
        if match is None:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(match.group(2)), 0)
            continue
        subprocess.run(["ip", "netns", "delete", match.group(1)], capture_output=True)
        removed.append(match.group(1))
    return removed


@contextlib.contextmanager
def veth_pair() -> Iterator[list[tuple[Path, str]]]:
    """Two new network namespaces, each with ``lo`` and an ``eth0`` joined to the other's.

    Yields [(namespace path, address), ...] for the leader and the worker; deletes both
    namespaces (and with them the veth pair) on the way out, whatever happened.
    """
    addresses = _check_cidr()
    prefix = ipaddress.ip_network(SMOKE_CIDR).prefixlen
    names = [f"{_NETNS_PREFIX}{os.getpid()}-{side}" for side in ("l", "w")]
    created: list[str] = []
    try:
        for name in names:
            _ip("netns", "add", name)
            created.append(name)
        ends = [f"tpmpi{os.getpid()}{side}" for side in ("l", "w")]
        _ip("link", "add", ends[0], "netns", names[0], "type", "veth",
            "peer", "name", ends[1], "netns", names[1])  # fmt: skip
        for name, end, address in zip(names, ends, addresses, strict=True):
            _ip("-n", name, "link", "set", end, "name", "eth0")
            _ip("-n", name, "addr", "add", f"{address}/{prefix}", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield [
            (Path("/run/netns") / name, address)
            for name, address in zip(names, addresses, strict=True)
        ]
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20)
