"""What status.slo and the SLOMet condition say, from the measured window (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from turnpike.api.modeldeployment import SLO
from turnpike.api.status import ConditionStatus, SLOBuckets, SLOStatus
from turnpike.slo.estimate import METHOD, Interval
from turnpike.slo.window import FAST_BURN_MINUTES, FINE_MINUTES, Counts, Window

CONDITION = "SLOMet"
# Burning starts when the budget is spent at twice the sustainable rate over
# both the last 5 minutes and the last hour, and ends when either falls to the
# sustainable rate: one slow minute does not flip the condition, and a
# condition at the edge does not flap.
BURN_ENTER = 2.0
BURN_EXIT = 1.0
BUDGET_LIMITED_FOR_S = 300.0


@dataclass(frozen=True, slots=True)
class Report:
    """The SLO's window after this reconcile's sampling round."""

    window: Window
    now: float  # epoch seconds
    interval: Interval | None = None
    # Why this round measured nothing although pods serve (scrape failures, a
    # source that cannot measure); None when it measured.
    unavailable: str | None = None
    # Whether the counts are due to be written to status now (the controller
    # spaces status writes; a change of the condition writes at once).
    flush: bool = True
    # The tier's budget capped the autoscaler within BUDGET_LIMITED_FOR_S: a
    # fleet at its budget is held back even on the ticks that ask for nothing.
    capped_recently: bool = False
    # How the good requests were counted: tritonMean (estimated from Triton's
    # means) or gateway (counted by the gateways in front, exactly).
    method: str = METHOD


def window_key(slo: SLO) -> str:
    """What the stored counts measured: counts of another latency or threshold
    (or another bucket size) are not comparable and start afresh."""
    return f"{slo.latency.value}<={slo.threshold_milliseconds:g}ms/{slo.window_minutes}m"


def burn_rate(counts: Counts, objective_percent: float) -> float | None:
    """Bad share over the error budget's share: 1 spends the budget in exactly the window."""
    if counts.requests <= 0:
        return None
    allowed = 1.0 - objective_percent / 100.0
    return (counts.bad / counts.requests) / allowed


def slo_status(slo: SLO, report: Report) -> SLOStatus:
    now = report.now
    total = report.window.total(now)
    attainment = lower = remaining = None
    if total.requests > 0:
        attainment = 100.0 * total.good / total.requests
        lower = 100.0 * total.good_lower / total.requests
        allowed = (1.0 - slo.objective_percent / 100.0) * total.requests
        remaining = 100.0 * (1.0 - total.bad / allowed)
    fast = burn_rate(report.window.recent(now, FAST_BURN_MINUTES), slo.objective_percent)
    slow = burn_rate(report.window.recent(now, FINE_MINUTES), slo.objective_percent)
    latency = report.interval.latency_ms if report.interval is not None else None
    return SLOStatus(
        method=report.method,
        attainment=f"{attainment:.2f}%" if attainment is not None else None,
        attainment_percent=_round(attainment),
        attainment_lower_bound_percent=_round(lower),
        requests=round(total.requests),
        window_covered_minutes=round(report.window.covered_minutes(now), 1),
        error_budget_remaining_percent=_round(remaining),
        burn_rate=_round(fast),
        burn_rate_hour=_round(slow),
        latency_ms=_round(latency),
        buckets=SLOBuckets.model_validate(report.window.trimmed(now).to_dict()),
    )


def slo_condition(
    slo: SLO,
    status: SLOStatus,
    unavailable: str | None,
    budget_limited: bool,
    was_burning: bool = False,
) -> tuple[ConditionStatus, str, str]:
    """SLOMet: True while the objective holds over the window and the budget is not
    burning; False says why (BudgetLimited when the tier's GPU budget is what keeps
    the fleet from growing); Unknown before any request completed."""
    target = f"{slo.objective_percent:g}% of requests within {slo.threshold_milliseconds:g}ms"
    what = f"{slo.latency.value} SLO ({target} over {slo.window_minutes}m)"
    if unavailable is not None:
        # Old counts say nothing about now: an outage must not read as Met. Before
        # anything was ever measured (a new deployment loading), it is not known yet.
        verdict: ConditionStatus = "False" if status.requests else "Unknown"
        return (verdict, "MetricsUnavailable", f"{what} cannot be measured: {unavailable}")
    if status.attainment_percent is None:
        return ("Unknown", "NoTraffic", f"{what}: no request completed in the window yet")
    numbers = (
        f"attainment {status.attainment} (at least {status.attainment_lower_bound_percent:g}%) "
        f"over {status.window_covered_minutes:g}m, {status.requests} requests"
    )
    if status.burn_rate is not None:
        numbers += f"; burn rate {status.burn_rate:g} over 5m"
        if status.burn_rate_hour is not None:
            numbers += f", {status.burn_rate_hour:g} over 1h"
    fast, slow = status.burn_rate, status.burn_rate_hour
    limit = BURN_EXIT if was_burning else BURN_ENTER
    burning = fast is not None and fast > limit and (slow is None or slow > limit)
    spent = status.attainment_percent < slo.objective_percent
    if not (burning or spent):
        return ("True", "Met", f"{what}: {numbers}")
    if budget_limited:
        return (
            "False",
            "BudgetLimited",
            f"{what}: {numbers}; the CapacityTier's GPU budget keeps the fleet from growing",
        )
    if burning:
        return ("False", "Burning", f"{what}: {numbers}; the error budget burns too fast")
    return ("False", "BudgetSpent", f"{what}: {numbers}; the window's error budget is spent")


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None
