"""Ports for the harness's own listeners, chosen outside the kernel's ephemeral range.

A port the kernel picks for ``bind(0)`` comes from the ephemeral range, the same
range it hands out as the source port of every outgoing connection. Between
picking a port and the server binding it (the scheduler starts several seconds
after the cluster's ports are chosen, while the API server, etcd and the
controller manager open client connections by the hundred), a client connection
can take it, and the server dies with "bind: address already in use": a CI run
lost its whole cluster that way. A port below the ephemeral range is never the
source port of an outgoing connection, so only another listener can take it, and
the check here sees listeners.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_DEFAULT_EPHEMERAL = (32768, 60999)
# Above the well-known ports and the usual development servers (8000s, 9000s).
LOWEST = 20000

_handed_out: set[int] = set()
_lock = threading.Lock()
_rng = random.SystemRandom()


def ephemeral_range(path: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range, inclusive (Linux's default if unreadable)."""
    try:
        low, high = (int(field) for field in path.read_text().split())
    except (OSError, ValueError):
        return LINUX_DEFAULT_EPHEMERAL
    return low, high


def listener_range(ephemeral: tuple[int, int]) -> tuple[int, int] | None:
    """A range [low, high) for listeners that no outgoing connection can use.

    Below the ephemeral range when there is room, else above it; None when the
    ephemeral range leaves no room worth searching.
    """
    low, high = ephemeral
    if low - LOWEST >= 1000:
        return LOWEST, low
    if 65535 - high >= 1000:
        return high + 1, 65536
    return None


def _bindable(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # TIME_WAIT leftovers do not stop a server that sets SO_REUSEADDR, as
        # every server here does; a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def free_port(ip: str = "127.0.0.1", *, attempts: int = 500) -> int:
    """A port nothing listens on at ``ip``, outside the ephemeral range.

    Never the same port twice in one process, so ports picked one after another
    for one cluster do not collide before their servers bind them.
    """
    span = listener_range(ephemeral_range())
    with _lock:
        if span is not None:
            for _ in range(attempts):
                port = _rng.randrange(*span)
                if port not in _handed_out and _bindable(ip, port):
                    _handed_out.add(port)
                    return port
        # No room outside the ephemeral range (or all of it busy): the kernel's
        # pick, with the race this module exists to avoid.
        for _ in range(attempts):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((ip, 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise OSError(f"no free port on {ip} after {attempts} attempts")


def free_ports(count: int, ip: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports on ``ip``."""
    return [free_port(ip) for _ in range(count)]
