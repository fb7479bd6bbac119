"""Queue-driven autoscaling: pure signal parsing and policy, plus the metric sources.

``signal`` and ``policy`` do no I/O and read no clock, so they are tested with
scripted samples; ``sources`` is the only module that talks to the network.
"""

from turnpike.autoscale.history import History, HistoryError, Sample
from turnpike.autoscale.policy import BudgetCap, Decision, Params, decide
from turnpike.autoscale.signal import (
    MetricsParseError,
    Observation,
    PodMetrics,
    parse_triton_metrics,
    queue_wait_ms,
)

__all__ = [
    "BudgetCap",
    "Decision",
    "History",
    "HistoryError",
    "MetricsParseError",
    "Observation",
    "Params",
    "PodMetrics",
    "Sample",
    "decide",
    "parse_triton_metrics",
    "queue_wait_ms",
]
