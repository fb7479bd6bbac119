"""The SLO meter: good requests over a compliance window, and whether the objective holds.

``estimate`` turns Triton's counters into counts per interval, ``window``
keeps them over the compliance window (and in status), ``report`` makes
status.slo and the SLOMet condition. All pure.
"""

from turnpike.slo.estimate import METHOD, Interval, interval_of
from turnpike.slo.report import CONDITION, Report, slo_condition, slo_status, window_key
from turnpike.slo.window import Counts, Window

__all__ = [
    "CONDITION",
    "METHOD",
    "Counts",
    "Interval",
    "Report",
    "Window",
    "interval_of",
    "slo_condition",
    "slo_status",
    "window_key",
]
