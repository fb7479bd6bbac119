"""Metric sources against real aiohttp servers on loopback.

Each fake pod is a server on its own 127.0.0.x address, all on one port, as
pods share Triton's metrics port. Traffic stays inside 127.0.0.0/8, every wait
is bounded by a source timeout, and "slow" servers block on an event that the
test sets at teardown instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from hack.ports import free_port
from turnpike.autoscale.history import History
from turnpike.autoscale.policy import Params, decide
from turnpike.autoscale.sources import (
    PodScrapeSource,
    PodTarget,
    PrometheusSource,
    PromLabels,
    build_queries,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def exposition(
    pending: float, queue_us: float = 0, success: float = 0, compute_us: float | None = None
) -> str:
    compute = (
        "# TYPE nv_inference_compute_infer_duration_us counter\n"
        f'nv_inference_compute_infer_duration_us{{model="m",version="1"}} {compute_us}\n'
        if compute_us is not None
        else ""
    )
    return compute + (
        "# HELP nv_inference_request_success Number of successful inference requests\n"
        "# TYPE nv_inference_request_success counter\n"
        f'nv_inference_request_success{{model="m",version="1"}} {success}\n'
        "# HELP nv_inference_pending_request_count Instantaneous number of pending requests\n"
        "# TYPE nv_inference_pending_request_count gauge\n"
        f'nv_inference_pending_request_count{{model="m",version="1"}} {pending}\n'
        "# HELP nv_inference_queue_duration_us Cumulative inference queuing duration\n"
        "# TYPE nv_inference_queue_duration_us counter\n"
        f'nv_inference_queue_duration_us{{model="m",version="1"}} {queue_us}\n'
    )


class Fleet:
    """Fake pods, one per loopback address, sharing one port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.release = asyncio.Event()  # unblocks "slow" handlers at teardown
        self.hits: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []
        self._next = 1

    def pod(self, name: str) -> PodTarget:
        """A pod nobody listens for: connection refused."""
        self._next += 1
        return PodTarget(name, f"127.0.0.{self._next}")

    async def serve(self, name: str, handler: Handler) -> PodTarget:
        target = self.pod(name)

        async def counted(request: web.Request) -> web.StreamResponse:
            self.hits[name] = self.hits.get(name, 0) + 1
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", counted)
        runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, target.ip, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            pytest.skip(f"cannot bind loopback alias {target.ip}: {exc}")
        self._runners.append(runner)
        return target

    async def text(self, name: str, body: Callable[[], str] | str) -> PodTarget:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(text=body() if callable(body) else body)

        return await self.serve(name, handler)

    async def hang(self, name: str) -> PodTarget:
        async def handler(request: web.Request) -> web.StreamResponse:
            await self.release.wait()
            return web.Response(text=exposition(999))

        return await self.serve(name, handler)

    async def close(self) -> None:
        self.release.set()
        for runner in self._runners:
            await runner.cleanup()


@asynccontextmanager
async def fleet() -> AsyncIterator[Fleet]:
    f = Fleet()
    try:
        yield f
    finally:
        await f.close()


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, timeout=20)

    asyncio.run(bounded())


# --- PodScrapeSource ------------------------------------------------------------


def test_healthy_slow_garbage_and_closed_pods() -> None:
    async def main() -> None:
        async with fleet() as f:
            healthy = await f.text("healthy", exposition(5))
            slow = await f.hang("slow")
            garbage = await f.text("garbage", "<html><body>502 Bad Gateway</body></html>")
            closed = f.pod("closed")
            source = PodScrapeSource(
                model="m", port=f.port, request_timeout_s=0.3, deadline_s=2.0, clock=lambda: 42.0
            )
            async with source:
                started = time.monotonic()
                obs = await source.sample([healthy, slow, garbage, closed])
                elapsed = time.monotonic() - started

        assert elapsed < 1.5  # bounded by the 0.3 s request timeout, not by the slow pod
        assert obs.time == 42.0
        assert obs.pods == ("healthy", "slow", "garbage", "closed")
        assert obs.queues == {"healthy": 5.0}
        assert obs.queue == 5.0
        assert obs.partial and obs.usable
        assert obs.failed["slow"] == "timeout after 0.3s"
        assert obs.failed["garbage"].startswith("garbage: not Prometheus text exposition")
        assert obs.failed["closed"].startswith("unreachable: ")
        assert set(obs.failed) == {"slow", "garbage", "closed"}

    run(main())


def test_overall_deadline_cuts_a_round_short() -> None:
    async def main() -> None:
        async with fleet() as f:
            healthy = await f.text("healthy", exposition(2))
            slow = await f.hang("slow")
            async with PodScrapeSource(port=f.port, request_timeout_s=10, deadline_s=0.3) as src:
                started = time.monotonic()
                obs = await src.sample([healthy, slow])
                elapsed = time.monotonic() - started
        assert elapsed < 2.0
        assert obs.queues == {"healthy": 2.0}
        assert obs.failed == {"slow": "no answer within the 0.3s deadline"}

    run(main())


def test_all_pods_failing_is_unusable_and_the_policy_holds() -> None:
    async def main() -> None:
        async with fleet() as f:
            slow = await f.hang("slow")
            bad = await f.text("bad", "not metrics at all")
            async with PodScrapeSource(port=f.port, request_timeout_s=0.2) as src:
                obs = await src.sample([slow, bad, f.pod("gone")])
        assert not obs.usable and not obs.partial
        d = decide(
            Params(min_replicas=1, max_replicas=8),
            current=3,
            ready=3,
            starting=0,
            history=History(),
            now=obs.time,
            observation=obs,
        )
        assert d.replicas == 3 and d.metrics_stale
        assert d.reason.startswith("no metrics (all 3 pods failed: bad: garbage:")

    run(main())


def test_http_errors_and_oversized_bodies_fail_the_pod() -> None:
    async def main() -> None:
        async def error(request: web.Request) -> web.StreamResponse:
            return web.Response(status=503, text="model loading")

        async with fleet() as f:
            down = await f.serve("down", error)
            huge = await f.text("huge", exposition(1) + "#" * 5000 + "\n")
            ok = await f.text("ok", exposition(1))
            async with PodScrapeSource(port=f.port, max_body_bytes=4096) as src:
                obs = await src.sample([down, huge, ok])
        assert obs.failed["down"] == "HTTP 503"
        assert "exceeds 4096" in obs.failed["huge"]
        assert obs.queues == {"ok": 1.0}

    run(main())


def test_queue_time_from_two_rounds_with_a_restart() -> None:
    async def main() -> None:
        counters = {"a": (0.0, 0.0), "b": (1_000_000.0, 100.0)}

        def body(pod: str) -> Callable[[], str]:
            return lambda: exposition(1, queue_us=counters[pod][0], success=counters[pod][1])

        async with fleet() as f:
            a = await f.text("a", body("a"))
            b = await f.text("b", body("b"))
            async with PodScrapeSource(model="m", port=f.port) as src:
                first = await src.sample([a, b])
                counters["a"] = (300_000.0, 10.0)  # 10 requests waited 300 ms in all
                counters["b"] = (100_000.0, 10.0)  # restarted: counters started over
                second = await src.sample([a, b])
                third = await src.sample([a, b])  # nothing completed since
        assert first.queue_time_ms is None  # no previous round yet
        assert second.queue_time_ms == pytest.approx(20.0)  # 400 ms / 20 requests
        assert third.queue_time_ms is None
        assert second.queue == 2.0

    run(main())


def test_proxy_environment_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, dead_proxy)

    async def main() -> None:
        async with fleet() as f:
            ok = await f.text("ok", exposition(3))
            async with PodScrapeSource(port=f.port) as src:
                obs = await src.sample([ok])
        assert obs.queues == {"ok": 3.0}, obs.failed

    run(main())


def test_no_pods_is_an_empty_observation() -> None:
    async def main() -> None:
        async with PodScrapeSource(clock=lambda: 7.0) as src:
            obs = await src.sample([])
        assert obs.pods == () and not obs.usable and obs.time == 7.0

    run(main())


def test_pod_urls() -> None:
    src = PodScrapeSource()
    assert src.url(PodTarget("p", "10.1.2.3")) == "http://10.1.2.3:8002/metrics"
    assert src.url(PodTarget("p", "fd00::12")) == "http://[fd00::12]:8002/metrics"


# --- PrometheusSource --------------------------------------------------------------


def test_prometheus_queries_are_documented_promql() -> None:
    q = build_queries(namespace="team-a", pods=["llm-7d9f-abc", "llm-7d9f-xyz"], model="ensemble")
    scope = 'namespace="team-a",pod=~"llm\\\\-7d9f\\\\-abc|llm\\\\-7d9f\\\\-xyz"'
    assert q.queue == (
        f'sum by (pod) (nv_inference_pending_request_count{{{scope},model="ensemble"}})'
    )
    assert q.waiting == (
        f'sum by (pod) (nv_trt_llm_request_metrics{{{scope},request_type="waiting"}})'
    )
    assert q.queue_time == (
        f'sum(rate(nv_inference_queue_duration_us{{{scope},model="ensemble"}}[1m])) / '
        'sum(rate({__name__=~"nv_inference_request_success|nv_inference_request_failure",'
        f'{scope},model="ensemble"}}[1m])) / 1000'
    )
    assert q.active == (
        f'sum by (pod) (nv_trt_llm_request_metrics{{{scope},request_type="active"}})'
    )
    assert q.computing == (
        "sum by (pod) (rate(nv_inference_compute_infer_duration_us"
        f'{{{scope},model="ensemble"}}[1m])) / 1e6'
    )


def test_prometheus_label_names_are_configurable_and_values_escaped() -> None:
    labels = PromLabels(
        namespace="kubernetes_namespace", pod="kubernetes_pod_name", extra={"job": "triton"}
    )
    q = build_queries(namespace='we"ird', pods=["a.b"], labels=labels, rate_window="30s")
    assert q.queue == (
        "sum by (kubernetes_pod_name) (nv_inference_pending_request_count{"
        'kubernetes_namespace="we\\"ird",kubernetes_pod_name=~"a\\\\.b",job="triton"})'
    )
    assert "[30s]" in q.queue_time
    with pytest.raises(ValueError):
        PromLabels(pod="pod name")
    with pytest.raises(ValueError):
        build_queries(namespace="n", pods=["a"], rate_window="1 minute")


def _vector(pairs: dict[str, str], label: str = "pod") -> dict[str, Any]:
    result = [
        {"metric": ({label: pod} if pod else {}), "value": [1767225600.0, value]}
        for pod, value in pairs.items()
    ]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


async def _prometheus(f: Fleet, answer: Callable[[str], web.StreamResponse]) -> str:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.method == "POST" and request.path == "/prom/api/v1/query"
        form = await request.post()
        query = str(form["query"])
        seen.append(query)
        return answer(query)

    target = await f.serve("prometheus", handler)
    return f"http://{target.ip}:{f.port}/prom/"


def test_prometheus_source_reads_per_pod_queues_and_queue_time() -> None:
    def answer(query: str) -> web.StreamResponse:
        if "nv_inference_pending_request_count" in query:
            return web.json_response(_vector({"a": "3", "b": "1"}))
        if 'request_type="waiting"' in query:
            return web.json_response(_vector({"a": "10"}))
        if 'request_type="active"' in query:
            return web.json_response(_vector({"a": "4"}))
        if "nv_inference_compute_infer_duration_us" in query:
            return web.json_response(_vector({"a": "99", "b": "2.5"}))
        return web.json_response(_vector({"": "12.5"}))

    async def main() -> None:
        async with fleet() as f:
            url = await _prometheus(f, answer)
            pods = [PodTarget("a", "10.0.0.1"), PodTarget("b", "10.0.0.2"), PodTarget("c", "x")]
            async with PrometheusSource(url, namespace="ns", clock=lambda: 5.0) as src:
                obs = await src.sample(pods)
        assert obs.time == 5.0
        assert obs.queues == {"a": 13.0, "b": 1.0}
        assert obs.queue == 14.0
        assert obs.queue_time_ms == 12.5
        assert obs.failed == {"c": "no series in Prometheus"}
        assert obs.partial
        # In flight: TensorRT-LLM's active requests where exported (a), else compute rate (b).
        assert obs.in_flight == 6.5

    run(main())


@pytest.mark.parametrize(
    ("computing", "in_flight"),
    [({"a": "1.5", "b": "0"}, 1.5), ({"a": "1.5"}, None), ({"a": "NaN", "b": "1"}, None)],
)
def test_prometheus_in_flight_is_unknown_unless_every_answering_pod_tells(
    computing: dict[str, str], in_flight: float | None
) -> None:
    """Without a pod's in-flight number the capacity guard must not act on a lower bound."""

    def answer(query: str) -> web.StreamResponse:
        if "nv_inference_pending_request_count" in query:
            return web.json_response(_vector({"a": "0", "b": "0"}))
        if "nv_inference_compute_infer_duration_us" in query:
            return web.json_response(_vector(computing))
        return web.json_response(_vector({}))

    async def main() -> None:
        async with fleet() as f:
            url = await _prometheus(f, answer)
            async with PrometheusSource(url, namespace="ns") as src:
                obs = await src.sample([PodTarget("a", ""), PodTarget("b", "")])
        assert obs.in_flight == in_flight

    run(main())


def test_prometheus_nan_queue_time_is_unknown() -> None:
    def answer(query: str) -> web.StreamResponse:
        if "rate(" in query:
            return web.json_response(_vector({"": "NaN"}))
        return web.json_response(_vector({"a": "0"}))

    async def main() -> None:
        async with fleet() as f:
            url = await _prometheus(f, answer)
            async with PrometheusSource(url, namespace="ns") as src:
                obs = await src.sample([PodTarget("a", "")])
        assert obs.queue_time_ms is None and obs.queues == {"a": 0.0}

    run(main())


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            lambda q: web.json_response(
                {"status": "error", "errorType": "bad_data", "error": "parse error"}, status=400
            ),
            "prometheus: HTTP 400, bad_data: parse error",
        ),
        (
            lambda q: web.Response(text="<html>oops</html>", status=502),
            "prometheus: HTTP 502, not JSON",
        ),
        (
            lambda q: web.json_response({"status": "success", "data": {"resultType": "matrix"}}),
            "prometheus: answer is not an instant vector",
        ),
        (
            lambda q: web.json_response(
                {"status": "success", "data": {"resultType": "vector", "result": [{"x": 1}]}}
            ),
            "prometheus: malformed vector",
        ),
    ],
)
def test_prometheus_failures_fail_every_pod(
    answer: Callable[[str], web.StreamResponse], reason: str
) -> None:
    async def main() -> None:
        async with fleet() as f:
            url = await _prometheus(f, answer)
            async with PrometheusSource(url, namespace="ns") as src:
                obs = await src.sample([PodTarget("a", ""), PodTarget("b", "")])
        assert not obs.usable
        assert set(obs.failed) == {"a", "b"}
        assert obs.failed["a"].startswith(reason), obs.failed["a"]

    run(main())


def test_prometheus_timeout_and_unreachable() -> None:
    async def main() -> None:
        async with fleet() as f:
            slow = await f.hang("slow")
            slow_url = f"http://{slow.ip}:{f.port}"
            async with PrometheusSource(slow_url, namespace="ns", timeout_s=0.3) as src:
                started = time.monotonic()
                timed_out = await src.sample([PodTarget("a", "")])
                assert time.monotonic() - started < 2.0
            gone = f.pod("gone")
            gone_url = f"http://{gone.ip}:{f.port}"
            async with PrometheusSource(gone_url, namespace="ns") as src:
                refused = await src.sample([PodTarget("a", "")])
        assert timed_out.failed == {"a": "prometheus: timeout after 0.3s"}
        assert refused.failed["a"].startswith("prometheus unreachable: ")

    run(main())


def test_prometheus_without_pods_sends_nothing() -> None:
    async def main() -> None:
        async with PrometheusSource("http://127.0.0.1:9", namespace="ns") as src:
            obs = await src.sample([])
        assert obs.pods == () and not obs.usable

    run(main())


def test_in_flight_from_two_rounds_of_compute_time() -> None:
    async def main() -> None:
        now = [100.0]
        compute = {"a": 0.0, "b": 0.0, "c": 0.0}

        def body(pod: str) -> Callable[[], str]:
            return lambda: exposition(0, compute_us=compute[pod])

        async with fleet() as f:
            a = await f.text("a", body("a"))
            b = await f.text("b", body("b"))
            async with PodScrapeSource(model="m", port=f.port, clock=lambda: now[0]) as src:
                first = await src.sample([a, b])
                now[0] += 2.0
                compute["a"] = 16_000_000.0  # 8 requests computing for 2 s
                compute["b"] = 4_000_000.0
                second = await src.sample([a, b])
                c = await f.text("c", body("c"))
                now[0] += 2.0
                third = await src.sample([a, b, c])  # c has no previous reading
        assert first.in_flight is None
        assert second.in_flight == pytest.approx(10.0)
        assert third.in_flight is None

    run(main())


def test_a_fresh_pod_counts_from_its_first_request_once_and_others_from_a_baseline() -> None:
    """Deltas are what the SLO meter and requests served count: a pod that started
    while the operator measured has all its requests new; one that ran before is
    only a baseline; a fresh pod that left the targets and came back is not
    counted from zero a second time."""

    async def main() -> None:
        served = {"new": 5.0, "old": 500.0}

        def body(pod: str) -> Callable[[], str]:
            return lambda: exposition(0, success=served[pod])

        async with fleet() as f:
            new = await f.text("new", body("new"))
            old = await f.text("old", body("old"))
            fresh = PodTarget(new.name, new.ip, fresh=True)
            async with PodScrapeSource(model="m", port=f.port) as src:
                first = await src.sample([fresh, old])
                served["new"], served["old"] = 8.0, 503.0
                second = await src.sample([old])  # "new" blipped out of the targets
                third = await src.sample([fresh, old])
        assert first.deltas["new"].completed == 5  # all of its requests
        assert "old" not in first.deltas  # its earlier requests were someone else's
        assert second.deltas["old"].completed == 3
        assert third.deltas["new"].completed == 3  # 8 - 5, not 8 again
        assert third.deltas["old"].completed == 0

    run(main())
