"""The ssh keys with which a multi-node replica's leader starts ranks on its workers.

One key set per ModelDeployment, in a Secret it owns: a client key (the
leader's, authorised on every worker) and a host key (every worker's, pinned in
the leader's known_hosts, so the client checks strictly and never trusts on
first use). The operator generates them once, when the Secret is missing
(:mod:`turnpike.controller.mpikeys`); everything here is pure.

Workers run OpenSSH's sshd as the unprivileged Triton user (uid 1000) with
every capability dropped: no privilege separation, no PAM, a port above 1024,
and keys read from the Secret's volume (owned by root, group-readable through
the pod's fsGroup, which ``StrictModes no`` accepts).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from turnpike.api.modeldeployment import ModelDeployment
from turnpike.render.labels import object_meta
from turnpike.render.names import child_name

SSH_PORT = 2222
KEYS_VOLUME = "mpi-keys"
KEYS_MOUNT = "/etc/turnpike/mpi"
# Secret volumes' files: readable by root and, through fsGroup, the Triton group.
KEYS_MODE = 0o440
SUFFIX = "-mpi"

CLIENT_KEY = "id_ed25519"
AUTHORIZED_KEYS = "authorized_keys"
HOST_KEY = "ssh_host_ed25519_key"
KNOWN_HOSTS = "known_hosts"
FILES = (CLIENT_KEY, AUTHORIZED_KEYS, HOST_KEY, KNOWN_HOSTS)


@dataclass(frozen=True)
class MpiKeys:
    """OpenSSH-format private keys and their one-line public keys."""

    client_private: str
    client_public: str
    host_private: str
    host_public: str

    def files(self) -> dict[str, str]:
        return {
            CLIENT_KEY: self.client_private,
            AUTHORIZED_KEYS: self.client_public.strip() + "\n",
            HOST_KEY: self.host_private,
            # Every worker shares the host key, so one line matches them all.
            KNOWN_HOSTS: f"* {self.host_public.strip()}\n",
        }


def secret_name(md: ModelDeployment) -> str:
    return child_name(md.metadata.name) + SUFFIX


def render_mpi_secret(md: ModelDeployment, keys: MpiKeys) -> dict[str, Any]:
    data = {
        name: base64.b64encode(text.encode()).decode("ascii")
        for name, text in sorted(keys.files().items())
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(md, secret_name(md)),
        "type": "Opaque",
        "data": data,
    }


def keys_from_secret(secret: dict[str, Any] | None) -> MpiKeys | None:
    """The key set a live Secret holds, or None when it is missing or incomplete
    (then a fresh set replaces it: the pods restart with the Secret anyway)."""
    if secret is None:
        return None
    data = secret.get("data") or {}
    try:
        files = {name: base64.b64decode(data[name]).decode() for name in FILES}
    except (KeyError, ValueError, TypeError):
        return None
    host_public = files[KNOWN_HOSTS].strip().removeprefix("* ")
    keys = MpiKeys(files[CLIENT_KEY], files[AUTHORIZED_KEYS].strip(), files[HOST_KEY], host_public)
    return keys if keys.files() == files else None


def keys_volume(md: ModelDeployment) -> dict[str, Any]:
    return {
        "name": KEYS_VOLUME,
        "secret": {"secretName": secret_name(md), "defaultMode": KEYS_MODE},
    }


def sshd_command() -> list[str]:
    """A worker's main process: sshd in the foreground, logging to stderr, for the
    Triton user only, keys from the Secret, nothing but public-key logins."""
    options = {
        "HostKey": f"{KEYS_MOUNT}/{HOST_KEY}",
        "AuthorizedKeysFile": f"{KEYS_MOUNT}/{AUTHORIZED_KEYS}",
        "StrictModes": "no",
        "UsePAM": "no",
        "PidFile": "none",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PermitRootLogin": "no",
        "AllowTcpForwarding": "no",
        "X11Forwarding": "no",
    }
    argv = ["/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null", "-p", str(SSH_PORT)]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return argv
