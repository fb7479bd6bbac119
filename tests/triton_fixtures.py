"""Helpers for tests that run a real Triton (and Prometheus) on loopback.

A module's server fixture::

    @pytest.fixture(scope="module")
    def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
        yield from serve(tmp_path_factory.mktemp("triton"))
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from hack import tritonlocal

T = TypeVar("T")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(present: bool, what: str, install: str) -> None:
    """Skip when ``what`` is missing on a developer machine; fail in CI (CI=true)."""
    if present:
        return
    message = f"{what} is missing: {install}"
    if in_ci():
        pytest.fail(f"{message} (CI must provide it)", pytrace=False)
    pytest.skip(message)


def require_triton() -> None:
    require(
        tritonlocal.server_binary() is not None,
        "tritonserver (from the nvidia-pytriton wheel)",
        "pip install -e '.[dev]'",
    )


def start_triton(log_dir: os.PathLike[str] | str, **kwargs: object) -> tritonlocal.TritonServer:
    """Start a server on a free 127.0.0.x with its log in ``log_dir``."""
    require_triton()
    ip = tritonlocal.pick_loopback_ip()
    server = tritonlocal.TritonServer(
        ip=ip,
        log_path=os.path.join(os.fspath(log_dir), f"triton-{ip}.log"),
        **kwargs,  # type: ignore[arg-type]
    )
    return server.start()


def serve(log_dir: os.PathLike[str] | str, **kwargs: object) -> Iterator[tritonlocal.TritonServer]:
    """Body of a server fixture: ``yield from serve(tmp_path_factory.mktemp("triton"))``."""
    server = start_triton(log_dir, **kwargs)
    try:
        yield server
    finally:
        server.stop()


async def poll(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.2,
    what: str = "condition",
) -> tuple[T, list[T]]:
    """Call ``probe`` until ``done(value)``; return (that value, every value seen).

    Bounded by ``timeout_s``; raises AssertionError with the values seen
    when the deadline passes.
    """
    deadline = time.monotonic() + timeout_s
    seen: list[T] = []
    while True:
        value = await probe()
        seen.append(value)
        if done(value):
            return value, seen
        if time.monotonic() >= deadline:
            tail = seen[-5:]
            raise AssertionError(f"{what} not reached within {timeout_s:g}s; last values: {tail}")
        # Pacing between probes; the loop is bounded by the deadline.
        await asyncio.sleep(interval_s)
