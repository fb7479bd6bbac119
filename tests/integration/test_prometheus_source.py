"""PrometheusSource against a real Prometheus scraping a real Triton.

Prometheus (Debian's ``prometheus`` package) scrapes the ``sleepy`` Triton
every second, attaching ``namespace``/``pod`` labels the way a PodMonitor
does, so the source's PromQL matches exactly as it would in a cluster.
Without the binary the module skips on a developer machine and fails in CI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from hack import loadgen, prometheus, tritonlocal
from tests.triton_fixtures import poll, require, serve
from turnpike.autoscale.signal import Observation
from turnpike.autoscale.sources import PodTarget, PrometheusSource

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]

NAMESPACE = "turnpike-prom-test"
POD = "sleepy-0"
CONCURRENCY = 8
RISEN = 4


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tritonlocal.TritonServer]:
    yield from serve(tmp_path_factory.mktemp("triton"))


@pytest.fixture(scope="module")
def prom(
    triton: tritonlocal.TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[prometheus.PrometheusServer]:
    require(prometheus.find_binary() is not None, "prometheus", prometheus.INSTALL_HINT)
    target = prometheus.ScrapeTarget(triton.metrics_address, {"namespace": NAMESPACE, "pod": POD})
    server = prometheus.PrometheusServer(
        [target], scrape_interval_s=1.0, workdir=tmp_path_factory.mktemp("prometheus")
    )
    server.start()
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, server.log_tail()


def source_for(prom: prometheus.PrometheusServer) -> PrometheusSource:
    return PrometheusSource(prom.url, namespace=NAMESPACE, model=tritonlocal.MODEL, timeout_s=5)


def test_prometheus_reports_the_queue_under_load(
    triton: tritonlocal.TritonServer, prom: prometheus.PrometheusServer
) -> None:
    pod = PodTarget(POD, triton.ip)

    async def body() -> None:
        async with source_for(prom) as source:
            idle, _ = await poll(
                lambda: source.sample([pod]),
                lambda o: o.usable,
                timeout_s=20,
                interval_s=0.25,
                what="Triton's series in Prometheus",
            )
            assert idle.queues == {POD: 0.0} and not idle.failed, idle

            stop = asyncio.Event()
            load = asyncio.create_task(
                loadgen.run_load(
                    [triton.http_address],
                    [(45.0, CONCURRENCY)],
                    stop=stop,
                    max_requests=2000,
                    request_timeout_s=15,
                )
            )
            try:
                high, seen = await poll(
                    lambda: source.sample([pod]),
                    lambda o: o.queue > RISEN,
                    timeout_s=30,
                    interval_s=0.25,
                    what=f"queue > {RISEN} in Prometheus",
                )
                # The capacity guard's input: compute seconds per second on the pod.
                busy, _ = await poll(
                    lambda: source.sample([pod]),
                    lambda o: o.in_flight is not None and o.in_flight > 0,
                    timeout_s=15,
                    interval_s=0.25,
                    what="requests in flight in Prometheus",
                )
            finally:
                stop.set()
                result = await asyncio.wait_for(load, timeout=30)
            print(f"prometheus queue depths under load: {[o.queue for o in seen]}")
            assert high.queues[POD] <= CONCURRENCY and not high.failed, high
            assert busy.in_flight is not None and busy.in_flight <= CONCURRENCY, busy
            assert result.ok > 0 and result.failed == 0, result.summary()

            # Completed requests waited: rate() over 1m of 1 s scrapes gives a mean.
            waited, _ = await poll(
                lambda: source.sample([pod]),
                lambda o: o.queue_time_ms is not None and o.queue_time_ms > 0,
                timeout_s=15,
                interval_s=0.25,
                what="a mean queue time",
            )
            assert waited.queue_time_ms is not None and waited.queue_time_ms > 50, waited

            await poll(
                lambda: source.sample([pod]),
                lambda o: o.usable and o.queue == 0,
                timeout_s=20,
                interval_s=0.25,
                what="queue back to 0 in Prometheus",
            )

    asyncio.run(body())


def test_pod_without_series_is_reported(
    triton: tritonlocal.TritonServer, prom: prometheus.PrometheusServer
) -> None:
    async def body() -> Observation:
        async with source_for(prom) as source:
            obs, _ = await poll(
                lambda: source.sample([PodTarget(POD, triton.ip), PodTarget("ghost", "127.0.0.2")]),
                lambda o: o.usable,
                timeout_s=20,
                interval_s=0.25,
                what="a usable sample",
            )
            return obs

    obs = asyncio.run(body())
    assert obs.partial
    assert obs.queues == {POD: 0.0}
    assert obs.failed == {"ghost": "no series in Prometheus"}


def test_prometheus_down_fails_every_pod() -> None:
    port = prometheus.free_port()  # nothing listens here once the probe socket closes

    async def body() -> Observation:
        async with PrometheusSource(f"http://127.0.0.1:{port}", namespace=NAMESPACE) as source:
            return await source.sample([PodTarget(POD, "127.0.0.3"), PodTarget("b", "127.0.0.4")])

    obs = asyncio.run(body())
    assert not obs.usable
    assert set(obs.failed) == {POD, "b"}
    assert all(why.startswith("prometheus unreachable") for why in obs.failed.values()), obs
