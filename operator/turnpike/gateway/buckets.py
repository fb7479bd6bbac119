"""Histogram bucket edges with one at every SLO threshold.

A Prometheus histogram counts observations ``<= le``; with an edge exactly
at a deployment's threshold, ``bucket{le=threshold} / count`` is the exact
fraction of good requests instead of an interpolation between neighbours.
Prometheus fixes the edges per metric family, not per label set, so every
deployment's threshold is an edge for all of them: a few extra buckets are
cheaper than a family per deployment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# Seconds, from a fast classifier to a long generation.
BASE_EDGES = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
# Above this many edges, scrapes and queries cost more than exactness is worth.
MAX_EDGES = 64


def bucket_edges(
    thresholds_s: Iterable[float], base: Iterable[float] = BASE_EDGES
) -> tuple[float, ...]:
    """Sorted, de-duplicated finite edges: ``base`` plus every threshold.

    Thresholds are kept even when that exceeds MAX_EDGES (they are the point);
    base edges closest to a threshold are dropped first, since their
    neighbour already resolves that region.
    """
    wanted = {round(t, 9) for t in thresholds_s if math.isfinite(t) and t > 0}
    others = sorted({round(b, 9) for b in base if math.isfinite(b) and b > 0} - wanted)
    if len(wanted) > MAX_EDGES:
        raise ValueError(f"{len(wanted)} distinct SLO thresholds; at most {MAX_EDGES}")
    while others and len(wanted) + len(others) > MAX_EDGES:

        def crowding(edge: float) -> float:
            return min((abs(math.log(edge / t)) for t in wanted), default=0.0)

        others.remove(min(others, key=crowding))
    return tuple(sorted(wanted | set(others)))
