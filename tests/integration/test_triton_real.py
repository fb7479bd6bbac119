"""PodScrapeSource against a real Triton (CPU, Python backend) on loopback.

The ``sleepy`` model serves one request at a time in 50 ms, so with 8
requests in flight Triton holds about 7 in its scheduler queue: the gauge the
autoscaler scales on. Also the failures the source must report rather than
hide: a model that is not there, a server that hangs, a server that is gone.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack import loadgen, tritonlocal
from tests.triton_fixtures import poll, serve, start_triton
from turnpike.autoscale.signal import Observation
from turnpike.autoscale.sources import PodScrapeSource, PodTarget

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]

POD = "sleepy-0"
CONCURRENCY = 8
RISEN = 4  # queue depth that proves requests are waiting (steady state is ~7)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tritonlocal.TritonServer]:
    """A ``sleepy`` (50 ms) Triton shared by the module's tests."""
    yield from serve(tmp_path_factory.mktemp("triton"))


def source_for(server: tritonlocal.TritonServer, **kwargs: object) -> PodScrapeSource:
    return PodScrapeSource(model=tritonlocal.MODEL, port=server.metrics_port, **kwargs)  # type: ignore[arg-type]


def test_server_is_ready_and_echoes(triton: tritonlocal.TritonServer) -> None:
    assert triton.ready()
    assert triton.startup_s is not None and triton.startup_s < 60
    print(f"triton startup: {triton.startup_s:.2f}s")
    assert tritonlocal.infer_once(triton.http_address) == [0.0, 1.0, 2.0, 3.0]
    text = triton.metrics_text()
    assert f'nv_inference_pending_request_count{{model="{tritonlocal.MODEL}",version="1"}}' in text


def test_queue_rises_under_load_and_drains_after(triton: tritonlocal.TritonServer) -> None:
    pod = PodTarget(POD, triton.ip)

    async def body() -> None:
        async with source_for(triton) as source:
            idle, _ = await poll(
                lambda: source.sample([pod]),
                lambda o: o.usable,
                timeout_s=10,
                what="a first scrape",
            )
            assert idle.queue == 0 and not idle.failed, idle

            stop = asyncio.Event()
            load = asyncio.create_task(
                loadgen.run_load(
                    [triton.http_address],
                    [(40.0, CONCURRENCY)],
                    stop=stop,
                    max_requests=2000,
                    request_timeout_s=15,
                )
            )
            risen: list[Observation] = []

            def high(o: Observation) -> bool:
                if o.queue > RISEN:
                    risen.append(o)
                return len(risen) >= 3  # seen more than once: a sustained queue

            try:
                _peak, seen = await poll(
                    lambda: source.sample([pod]), high, timeout_s=30, what=f"queue > {RISEN}"
                )
            finally:
                stop.set()
                result = await asyncio.wait_for(load, timeout=30)

            assert all(not o.failed for o in seen), [o.failed for o in seen if o.failed]
            depths = [o.queue for o in seen]
            print(f"queue depths under load (concurrency {CONCURRENCY}): {depths}")
            assert max(depths) <= CONCURRENCY
            # Requests waited in the queue, and the source turned the counters into a mean.
            waits = [o.queue_time_ms for o in seen if o.queue_time_ms is not None]
            assert waits and max(waits) > 50, waits
            assert result.ok > 0 and result.failed == 0, result.summary()
            assert result.stopped_by == "stop"

            drained, _ = await poll(
                lambda: source.sample([pod]),
                lambda o: o.usable and o.queue == 0,
                timeout_s=15,
                what="queue back to 0 after the load",
            )
            assert drained.queues == {POD: 0.0} and not drained.failed

    asyncio.run(body())


def test_unreachable_pod_makes_a_partial_observation(triton: tritonlocal.TritonServer) -> None:
    ghost_ip = tritonlocal.pick_loopback_ip(
        (triton.metrics_port,), avoid=[triton.ip]
    )  # nothing listens there

    async def body() -> Observation:
        async with source_for(triton) as source:
            return await source.sample([PodTarget(POD, triton.ip), PodTarget("ghost", ghost_ip)])

    obs = asyncio.run(body())
    assert obs.partial, obs
    assert obs.queues == {POD: 0.0}
    assert set(obs.failed) == {"ghost"}
    assert obs.failed["ghost"].startswith("unreachable"), obs.failed


def test_model_not_loaded_is_reported(triton: tritonlocal.TritonServer) -> None:
    async def body() -> Observation:
        async with PodScrapeSource(model="not-there", port=triton.metrics_port) as source:
            return await source.sample([PodTarget(POD, triton.ip)])

    obs = asyncio.run(body())
    assert not obs.usable
    assert "no metrics for model 'not-there'" in obs.failed[POD], obs.failed


def test_hung_server_times_out(triton: tritonlocal.TritonServer) -> None:
    """A SIGSTOPped Triton keeps its socket but never answers: a timeout, not a zero."""
    pod = PodTarget(POD, triton.ip)

    async def body() -> tuple[Observation, Observation]:
        async with source_for(triton, request_timeout_s=0.5, deadline_s=1.0) as source:
            triton.pause()
            try:
                hung = await source.sample([pod])
            finally:
                triton.resume()
            back, _ = await poll(
                lambda: source.sample([pod]), lambda o: o.usable, timeout_s=10, what="recovery"
            )
            return hung, back

    hung, back = asyncio.run(body())
    assert not hung.usable and hung.queue == 0
    assert "timeout" in hung.failed[POD] or "no answer" in hung.failed[POD], hung.failed
    assert back.queues == {POD: 0.0}


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_stopped_server_is_reported_failed(how: str, tmp_path: Path) -> None:
    # A graceful stop must exit 0: give it time on a busy machine before SIGKILL.
    server = start_triton(tmp_path, stop_timeout_s=60)
    pod = PodTarget(POD, server.ip)
    try:

        async def sample() -> Observation:
            async with source_for(server) as source:
                return await source.sample([pod])

        before = asyncio.run(sample())
        assert before.queues == {POD: 0.0}, before

        pgid = server.pid
        assert pgid is not None
        code = server.stop() if how == "stop" else server.kill()
        if how == "stop":
            assert code == 0, server.log_tail()
        else:
            assert code == -signal.SIGKILL
        # No orphans: the server's group (backend stubs included) is empty.
        assert not tritonlocal._group_members(pgid)
        assert tritonlocal.ports_free(server.ip, (server.http_port, server.metrics_port))

        after = asyncio.run(sample())
        assert not after.usable and after.queue == 0
        assert after.failed[POD].startswith("unreachable"), after.failed
    finally:
        server.stop()
