"""Request traces: when each request arrives and how long a GPU slot serves it.

A trace is a piecewise-constant offered rate (one value per second) turned
into a non-homogeneous Poisson stream, plus one service time per request.
Everything comes from ``numpy.random.default_rng([seed, trace index])``, so a
trace is identical for every policy that replays it (common random numbers)
and identical across runs.

Service times are lognormal around the mean with a coefficient of variation
of 0.3: a GPU slot's time per request varies with prompt and output length,
but far less than exponentially.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

RATE_STEP_S = 1.0
SERVICE_CV = 0.3

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Trace:
    """Offered load (one rate per second) and the requests drawn from it."""

    name: str
    description: str
    duration_s: float
    rates: tuple[float, ...]
    arrivals: tuple[float, ...]
    service_s: tuple[float, ...]
    seed: int
    # The first warmup_s seconds replay the initial rate so that every
    # autoscaler reaches its own operating point; metrics skip them.
    warmup_s: float = 0.0

    def rate_at(self, t: float) -> float:
        i = min(max(int(t // RATE_STEP_S), 0), len(self.rates) - 1)
        return self.rates[i]

    @property
    def requests(self) -> int:
        return len(self.arrivals)

    def offered_slot_seconds(self) -> float:
        """Total service demand: the sum of all service times (slot-seconds)."""
        return math.fsum(self.service_s)


def from_rates(
    name: str,
    description: str,
    rates: FloatArray,
    *,
    mean_service_s: float,
    rng: np.random.Generator,
    seed: int,
    warmup_s: float = 0.0,
) -> Trace:
    """Draw Poisson arrivals for a per-second rate profile, and service times."""
    counts = rng.poisson(rates * RATE_STEP_S)
    starts = np.repeat(np.arange(len(rates), dtype=np.float64) * RATE_STEP_S, counts)
    arrivals = np.sort(starts + rng.uniform(0.0, RATE_STEP_S, size=starts.size))
    sigma2 = math.log1p(SERVICE_CV**2)
    service = rng.lognormal(math.log(mean_service_s) - sigma2 / 2, math.sqrt(sigma2), arrivals.size)
    return Trace(
        name=name,
        description=description,
        duration_s=len(rates) * RATE_STEP_S,
        rates=tuple(float(r) for r in rates),
        arrivals=tuple(arrivals.tolist()),
        service_s=tuple(service.tolist()),
        seed=seed,
        warmup_s=warmup_s,
    )


def steady_rates(duration_s: float, rng: np.random.Generator, rate: float = 44.0) -> FloatArray:
    """Constant load (Poisson noise only)."""
    del rng
    return np.full(_steps(duration_s), rate)


def diurnal_rates(
    duration_s: float, rng: np.random.Generator, low: float = 12.0, high: float = 120.0
) -> FloatArray:
    """One day compressed into the run: low → high at mid-run → low, sinusoidal."""
    del rng
    t = np.arange(_steps(duration_s), dtype=np.float64) * RATE_STEP_S
    shape = (1.0 - np.cos(2.0 * math.pi * t / duration_s)) / 2.0
    return np.asarray(low + (high - low) * shape, dtype=np.float64)


def bursty_rates(
    duration_s: float, rng: np.random.Generator, base: float = 24.0, burst: float = 96.0
) -> FloatArray:
    """On/off: quiet periods of 3-8 min, then bursts at 4× for 1-4 min."""
    out = np.full(_steps(duration_s), base)
    t = float(rng.uniform(180.0, 300.0))
    while t < duration_s:
        length = float(rng.uniform(60.0, 240.0))
        out[_idx(t) : _idx(t + length)] = burst
        t += length + float(rng.uniform(180.0, 480.0))
    return out


def spiky_rates(duration_s: float, rng: np.random.Generator, base: float = 32.0) -> FloatArray:
    """Steady base with sudden 5-10× spikes lasting 30-60 s, 6-10 min apart."""
    out = np.full(_steps(duration_s), base)
    t = float(rng.uniform(240.0, 360.0))
    while t < duration_s:
        length = float(rng.uniform(30.0, 60.0))
        out[_idx(t) : _idx(t + length)] = base * float(rng.uniform(5.0, 10.0))
        t += length + float(rng.uniform(360.0, 600.0))
    return out


RateFn = Callable[[float, np.random.Generator], FloatArray]

TRACES: dict[str, tuple[RateFn, str]] = {
    "steady": (steady_rates, "constant 44 req/s"),
    "diurnal": (diurnal_rates, "sinusoid 12 → 120 → 12 req/s over the run"),
    "bursty": (bursty_rates, "24 req/s with 1-4 min bursts at 96 req/s"),
    "spiky": (spiky_rates, "32 req/s with 30-60 s spikes at 5-10×"),
}


def make_trace(
    name: str,
    *,
    duration_s: float = 3600.0,
    warmup_s: float = 0.0,
    mean_service_s: float = 1.0,
    seed: int = 7,
) -> Trace:
    """One of :data:`TRACES`, deterministic for a given seed.

    ``warmup_s`` seconds at the profile's initial rate come first.
    """
    rate_fn, description = TRACES[name]
    index = list(TRACES).index(name)
    rng = np.random.default_rng([seed, index])
    profile = rate_fn(duration_s, rng)
    rates = np.concatenate([np.full(_steps(warmup_s), profile[0]), profile])
    return from_rates(
        name,
        description,
        rates,
        mean_service_s=mean_service_s,
        rng=rng,
        seed=seed,
        warmup_s=warmup_s,
    )


def constant_trace(
    rate: float,
    duration_s: float,
    *,
    mean_service_s: float = 1.0,
    seed: int = 0,
    name: str = "constant",
) -> Trace:
    return step_trace([(duration_s, rate)], mean_service_s=mean_service_s, seed=seed, name=name)


def step_trace(
    phases: list[tuple[float, float]],
    *,
    mean_service_s: float = 1.0,
    seed: int = 0,
    name: str = "steps",
) -> Trace:
    """Consecutive (duration, rate) phases; for tests and experiments."""
    rates = np.concatenate([np.full(_steps(d), r) for d, r in phases])
    rng = np.random.default_rng([seed, 99])
    return from_rates(
        name, f"phases {phases}", rates, mean_service_s=mean_service_s, rng=rng, seed=seed
    )


def _steps(duration_s: float) -> int:
    return round(duration_s / RATE_STEP_S)


def _idx(t: float) -> int:
    return round(t / RATE_STEP_S)
