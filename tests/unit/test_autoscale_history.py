"""The autoscaler history: recording, trimming, compaction and its status encoding."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from turnpike.autoscale.history import MAX_ENTRIES, History, HistoryError, Sample, round_value

T0_MS = 1_767_225_600_000
GAP_MS = 6_000


def build(values: list[float], *, step_ms: int = 2_000, ready: int = 4) -> History:
    h = History()
    for i, v in enumerate(values):
        h = h.record(Sample(T0_MS + i * step_ms, v, ready), max_gap_ms=GAP_MS)
    return h


def test_encoding_is_compact_and_relative() -> None:
    h = build([16.0, 17.5, 3.0])
    assert h.to_dict() == {
        "v": 1,
        "metric": "queueDepth",
        "t0": T0_MS,
        "since": T0_MS,
        "samples": [[0, 16.0, 4], [2000, 17.5, 4], [4000, 3.0, 4]],
    }
    assert History().to_dict() == {"v": 1, "metric": "queueDepth", "samples": []}


def test_round_trip_through_json_is_exact() -> None:
    h = build([round_value(v / 7) for v in range(150)])
    again = History.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again == h


def test_round_trip_survives_integral_floats_written_as_ints() -> None:
    # The API server (Go) writes 3.0 back as 3.
    data: dict[str, Any] = {
        "v": 1,
        "metric": "queueDepth",
        "t0": T0_MS,
        "since": T0_MS,
        "samples": [[0, 3, 4], [2000.0, 4.5, 4]],
    }
    h = History.from_dict(data)
    assert h.samples == (Sample(T0_MS, 3.0, 4), Sample(T0_MS + 2000, 4.5, 4))


def test_a_full_history_stays_small_in_status() -> None:
    h = build([round_value(1000 + i / 3) for i in range(MAX_ENTRIES)])
    encoded = json.dumps(h.to_dict(), separators=(",", ":"))
    assert len(encoded) < 6 * 1024


def test_recording_the_same_scrape_twice_is_a_no_op() -> None:
    h = build([1.0, 2.0])
    assert h.record(Sample(T0_MS + 2000, 99.0, 4), max_gap_ms=GAP_MS) is h
    assert h.record(Sample(T0_MS, 99.0, 4), max_gap_ms=GAP_MS) is h


def test_a_gap_resets_coverage() -> None:
    h = build([1.0, 2.0])
    assert h.since_ms == T0_MS
    h = h.record(Sample(T0_MS + 2000 + GAP_MS, 3.0, 4), max_gap_ms=GAP_MS)
    assert h.since_ms == T0_MS  # exactly the limit: still unbroken
    h = h.record(Sample(T0_MS + 2001 + 2 * GAP_MS, 3.0, 4), max_gap_ms=GAP_MS)
    assert h.since_ms == T0_MS + 2001 + 2 * GAP_MS


def test_trim_drops_samples_older_than_the_longest_window() -> None:
    h = build([float(i) for i in range(100)])  # 0 .. 198 s
    now = T0_MS + 198_000
    t = h.trimmed(now_ms=now, keep_ms=120_000, panic_ms=6_000)
    assert t.samples[0].t_ms == now - 120_000
    assert len(t.samples) == 61
    assert t.since_ms == h.since_ms  # coverage is not trimmed away
    empty = h.trimmed(now_ms=now + 10**9, keep_ms=120_000, panic_ms=6_000)
    assert empty.samples == () and empty.since_ms is None


def test_compaction_bounds_length_and_keeps_peaks() -> None:
    values = [1.0] * 1800
    values[700] = 50.0  # one peak, far older than the panic window
    h = build(values, step_ms=1_000)
    now = T0_MS + 1_799_000
    t = h.trimmed(now_ms=now, keep_ms=1_800_000, panic_ms=6_000)
    assert len(t.samples) <= MAX_ENTRIES
    assert max(s.value for s in t.samples) == 50.0
    # The panic window keeps full resolution.
    recent = [s for s in t.samples if s.t_ms >= now - 6_000]
    assert [s.t_ms for s in recent] == [now - 6_000 + 1000 * i for i in range(7)]
    # The merged bucket keeps the peak no shorter than the raw sample would.
    peak = next(s for s in t.samples if s.value == 50.0)
    assert peak.t_ms >= T0_MS + 700_000


def test_compaction_is_bounded_even_for_a_huge_panic_window() -> None:
    h = build([float(i % 7) for i in range(1200)], step_ms=1_000)
    now = T0_MS + 1_199_000
    t = h.trimmed(now_ms=now, keep_ms=600_000, panic_ms=600_000)
    assert len(t.samples) <= MAX_ENTRIES
    assert max(s.value for s in t.samples) == 6.0


def test_compaction_is_stable_across_ticks() -> None:
    # Re-compacting an already compacted history with a new sample must not
    # keep re-merging old buckets into ever larger ones.
    h = build([1.0] * 1000, step_ms=1_000)
    now = T0_MS + 999_000
    for _ in range(300):
        now += 1000
        h = h.record(Sample(now, 1.0, 4), max_gap_ms=GAP_MS)
        h = h.trimmed(now_ms=now, keep_ms=900_000, panic_ms=6_000)
        assert len(h.samples) <= MAX_ENTRIES
    gaps = [b.t_ms - a.t_ms for a, b in zip(h.samples, h.samples[1:], strict=False)]
    assert max(gaps) <= math.ceil(900_000 / (MAX_ENTRIES // 2)) * 2


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"v": 2, "metric": "queueDepth", "samples": []},
        {"v": 1, "samples": []},
        {"v": 1, "metric": 7, "samples": []},
        {"v": 1, "metric": "queueDepth", "samples": "nope"},
        {"v": 1, "metric": "queueDepth", "samples": [[0, 1.0, 4]]},  # no t0
        {"v": 1, "metric": "queueDepth", "t0": "x", "samples": [[0, 1.0, 4]]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[0, 1.0]]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[0, "1", 4]]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[0, -1.0, 4]]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[0, float("nan"), 4]]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[0, True, 4]]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[0.5, 1.0, 4]]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[10, 1.0, 4], [5, 1.0, 4]]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[i, 1.0, 1] for i in range(201)]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[0, 1.0, 4, 2.0]]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[0, 1.0, 4, -2.0, 8.0, 0]]},
        {"v": 1, "metric": "queueDepth", "t0": 0, "samples": [[0, 1.0, 4, 2.0, 8.0, 0.5]]},
    ],
)
def test_malformed_history_raises_history_error(data: dict[str, Any]) -> None:
    with pytest.raises(HistoryError):
        History.from_dict(data)


@pytest.mark.parametrize("data", [None, "garbage", 42, [], {"v": 9}])
def test_restore_starts_afresh_on_garbage(data: object) -> None:
    assert History.restore(data, "queueDepth") == History(metric="queueDepth")


def test_restore_discards_another_metrics_history() -> None:
    stored = build([1.0, 2.0]).to_dict()
    assert History.restore(stored, "queueTime") == History(metric="queueTime")
    assert History.restore(stored, "queueDepth") == build([1.0, 2.0])


def test_optional_fields_round_trip_in_six_element_entries() -> None:
    h = History(
        "queueDepth",
        T0_MS,
        (
            Sample(T0_MS, 3.0, 4),
            Sample(T0_MS + 2000, 0.0, 4, in_flight=30.5, slots=8.0, change=-1),
            Sample(T0_MS + 4000, 0.0, 3, in_flight=None, slots=8.0, change=2),
        ),
    )
    data = h.to_dict()
    assert data["samples"] == [
        [0, 3.0, 4],
        [2000, 0.0, 4, 30.5, 8.0, -1],
        [4000, 0.0, 3, -1, 8.0, 2],
    ]
    assert History.from_dict(json.loads(json.dumps(data))) == h


def test_recording_learns_and_carries_slots() -> None:
    h = History.empty("queueDepth")
    h = h.record(Sample(1000, 0.0, 4, in_flight=20.0), max_gap_ms=6000)
    assert h.slots is None  # nothing waited: the slots may not be full
    h = h.record(Sample(3000, 5.0, 4, in_flight=4.0), max_gap_ms=6000)
    # A queue at the end of an interval that began idle: the rate says nothing.
    assert h.slots is None
    h = h.record(Sample(5000, 5.0, 4, in_flight=32.0), max_gap_ms=6000)
    assert h.slots == 8.0  # waiting at both ends: the slots were full throughout
    h = h.record(Sample(7000, 1.0, 4, in_flight=24.0), max_gap_ms=6000)
    assert h.slots == 8.0  # the most seen, carried forward
    h = h.trimmed(now_ms=7000, keep_ms=1000, panic_ms=1000)
    assert [s.t_ms for s in h.samples] == [7000] and h.slots == 8.0


def test_slots_are_not_learned_across_a_gap() -> None:
    h = History.empty("queueDepth")
    h = h.record(Sample(1000, 5.0, 4, in_flight=32.0), max_gap_ms=6000)
    h = h.record(Sample(60_000, 5.0, 4, in_flight=4.0), max_gap_ms=6000)
    assert h.slots is None  # nobody knows what happened in between


def test_mark_change_replaces_the_latest_mark() -> None:
    h = History.empty("queueDepth").record(Sample(1000, 0.0, 4), max_gap_ms=6000)
    h = h.mark_change(-1).mark_change(-1)
    assert h.samples[-1].change == -1


def test_compaction_keeps_marks_and_capacity() -> None:
    samples = tuple(
        Sample(i * 1000, 0.0, 4, in_flight=float(i % 7), slots=8.0, change=-1 if i == 3 else 0)
        for i in range(400)
    )
    h = History("queueDepth", 0, samples).trimmed(now_ms=399_000, keep_ms=400_000, panic_ms=6000)
    assert len(h.samples) <= MAX_ENTRIES
    assert sum(s.change for s in h.samples) == -1
    assert h.slots == 8.0


def test_six_element_entries_fit_the_status_schema() -> None:
    from turnpike.controller.autoscaler import history_status

    h = History("queueDepth", T0_MS, (Sample(T0_MS, 0.0, 4, in_flight=30.5, slots=8.0, change=-1),))
    stored = history_status(h).to_k8s()
    assert History.restore(stored, "queueDepth") == h
