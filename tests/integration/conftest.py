"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hack.kubectl import Kubectl, eventually


@pytest.fixture
def tiers(kubectl: Kubectl) -> Iterator[list[str]]:
    """Names of tiers a test creates; deleted (with their consumers gone) afterwards."""
    created: list[str] = []
    yield created
    # The admission policy refuses to delete a tier whose status still lists
    # consumers; its status follows their deletion within seconds.
    for name in created:

        def deleted(name: str = name) -> bool:
            args = ("delete", "capacitytier", name, "--wait=false", "--ignore-not-found")
            return kubectl.run(*args, check=False).returncode == 0

        eventually(f"CapacityTier {name} deleted", deleted, timeout=60, interval=1)
