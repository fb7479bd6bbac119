"""Requests held while a deployment has no ready replica (scale from zero).

The shell parks each held request until an endpoint appears or its timeout
passes; this book only decides whether one more may be held and counts them,
because the count is what the autoscaler must see as queue: a deployment at
zero replicas has no Triton to report a queue, so without the held count
nothing would ever wake it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Held:
    """One held request; release it exactly once (the book ignores repeats)."""

    deployment: str
    released: bool = False


class HoldBook:
    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def hold(self, deployment: str, limit: int) -> Held | None:
        """A place among ``deployment``'s held requests, or None when ``limit`` are held."""
        count = self._held.get(deployment, 0)
        if count >= limit:
            return None
        self._held[deployment] = count + 1
        return Held(deployment)

    def release(self, held: Held) -> None:
        if held.released:
            return
        held.released = True
        count = self._held[held.deployment] - 1
        if count:
            self._held[held.deployment] = count
        else:
            del self._held[held.deployment]

    def held(self, deployment: str) -> int:
        return self._held.get(deployment, 0)

    def counts(self) -> Mapping[str, int]:
        return dict(self._held)
