"""Who is asking: request headers to a tenant and its tier.

API keys are kept only as SHA-256 digests, so neither a log line, a repr nor
a crash dump of the gateway's state can leak one; the presented key is hashed
once per request and looked up by digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from turnpike.gateway.config import GatewayConfig

API_KEY_HEADER = "X-Api-Key"
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    tier: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request has no identity; ``status`` is what the client gets."""

    status: int
    reason: str


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key of ``Authorization: Bearer`` (the OpenAI clients' way) or X-Api-Key."""
    auth = headers.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get(API_KEY_HEADER)
    return key.strip() if key and key.strip() else None


class TenantBook:
    """Built once from the configuration; ``identify`` is the per-request path."""

    def __init__(self, config: GatewayConfig) -> None:
        self._by_digest: dict[str, Identity] = {}
        self._by_header: dict[str, Identity] = {}
        for name, tenant in config.tenants.items():
            identity = Identity(name, tenant.tier)
            for digest in tenant.key_digests():
                self._by_digest[digest] = identity
            for value in tenant.header_values:
                self._by_header[value] = identity
        self._header = config.tenant_header
        self._default = (
            Identity(ANONYMOUS, config.default_tier) if config.default_tier is not None else None
        )

    def __repr__(self) -> str:
        return f"TenantBook({len(self._by_digest)} keys, {len(self._by_header)} header values)"

    def identify(self, headers: Mapping[str, str]) -> Identity | Refusal:
        """An API key wins over the tenant header: a key is a credential, the header a hint.

        A key that is presented but unknown is refused rather than downgraded to
        the default tier, so a typo in a client's key is noticed at once.
        """
        key = presented_key(headers)
        if key is not None:
            found = self._by_digest.get(hashlib.sha256(key.encode()).hexdigest())
            return found if found is not None else Refusal(401, "unknown API key")
        if self._header is not None:
            value = headers.get(self._header)
            if value is not None:
                found = self._by_header.get(value.strip())
                return found if found is not None else Refusal(403, "unknown tenant")
        if self._default is None:
            return Refusal(401, "an API key is required")
        return self._default
