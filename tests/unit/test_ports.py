"""The harness's listener ports never come from the range outgoing connections use.

A CI run lost its cluster when the scheduler's port, picked by bind(0), became the
source port of some client connection before the scheduler started.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hack import ports


def test_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    low, _ = ports.ephemeral_range()
    picked = ports.free_ports(200)
    assert len(set(picked)) == 200
    if low - ports.LOWEST >= 1000:
        assert all(ports.LOWEST <= port < low for port in picked)


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        monkeypatch.setattr(ports, "listener_range", lambda _: (busy, busy + 2))
        assert ports.free_port() == busy + 1


def test_an_unreadable_range_file_means_the_linux_default(tmp_path: Path) -> None:
    assert ports.ephemeral_range(tmp_path / "missing") == ports.LINUX_DEFAULT_EPHEMERAL
    garbage = tmp_path / "garbage"
    garbage.write_text("not numbers\n")
    assert ports.ephemeral_range(garbage) == ports.LINUX_DEFAULT_EPHEMERAL


@given(st.integers(1024, 65535), st.integers(1024, 65535))
def test_the_listener_range_never_overlaps_the_ephemeral_range(a: int, b: int) -> None:
    low, high = min(a, b), max(a, b)
    span = ports.listener_range((low, high))
    if span is not None:
        start, stop = span
        assert 1024 < start < stop <= 65536
        assert stop <= low or start > high
        assert stop - start >= 1000
