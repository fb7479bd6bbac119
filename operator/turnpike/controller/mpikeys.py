"""Fresh ssh keys for a multi-node ModelDeployment (the impure half of render.mpikeys).

Generated once, when the ModelDeployment's key Secret is missing or unreadable;
the reconcile that generates them applies the Secret in the same pass, and the
next one reads them back from it, so a key set never changes under running pods.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from turnpike.render.mpikeys import MpiKeys


def _pair(comment: str) -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    return private, f"{public} {comment}"


def generate_mpi_keys(owner: str) -> MpiKeys:
    """A client key (the leader's) and a host key (the workers'), Ed25519."""
    client_private, client_public = _pair(f"turnpike-leader@{owner}")
    host_private, host_public = _pair(f"turnpike-worker@{owner}")
    return MpiKeys(client_private, client_public, host_private, host_public)
