"""The gateway installed by the chart, in front of real Triton pods.

`helm install` with ``gateway.enabled``: two `turnpike gateway` pods and two
operator pods from the operator image, on the real node, under Pod Security
`restricted`. The gateways discover the ModelDeployments and their ready pods
from the API server; the operator polls the gateways' held requests. Clients
are this test process, reaching the gateway pods over the pod network.

What a user would notice, measured and printed:

- a ``minReplicas: 0`` deployment idles down to zero, and 100 requests sent at
  once at zero all succeed without a client retry, the first within the
  cold-start time status reports;
- on one saturated replica at its maximum, the reserved tenant keeps its
  weighted share and its latency objective while spot is shed with 429;
- OpenAI-compatible completions and chat, plain and streamed, reach a
  decoupled (streaming) Triton model.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import yaml
from yarl import URL

from hack import chart_operator
from hack.chart_operator import ChartOperator
from hack.kubectl import Kubectl, eventually
from tests.conftest import FIGURES
from tests.integration.test_chart import tool
from tests.realpods import local_volume, node_image, real_md

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.in_cluster_operator,
    pytest.mark.usefixtures("real_node", "crds_installed"),
]

TENANT_HEADER = "X-Tenant"
SLO_MS = 500
IDLE_S = 30
CONCURRENT_AT_ZERO = 100
GATEWAY_CONFIG: dict[str, Any] = {
    "tenantHeader": TENANT_HEADER,
    "defaultTier": "spot",
    "tiers": {
        "reserved": {"priority": 100, "weight": 3, "reserved": True},
        "spot": {"priority": 0, "weight": 1},
    },
    "tenants": {
        "acme": {"tier": "reserved", "headerValues": ["acme"]},
        "bargain": {"tier": "spot", "headerValues": ["bargain"]},
    },
    "defaults": {"holdTimeoutSeconds": 180, "holdLimit": 200, "queueTimeoutSeconds": 30},
    "deployments": {
        "sleepy-shared": {
            "maxInFlightPerReplica": 1,
            "queueLimit": 8,
            "queueTimeoutSeconds": 5,
            "sloThresholdMilliseconds": SLO_MS,
        },
    },
}


@pytest.fixture(scope="module")
def release(
    kubectl: Kubectl, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartOperator]:
    values = tmp_path_factory.mktemp("gateway") / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "operator": {"resyncSeconds": 10},
                "gateway": {
                    "enabled": True,
                    "config": GATEWAY_CONFIG,
                    "nodeSelector": {"turnpike.dev/node-kind": "real"},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                },
            }
        )
    )
    started = time.monotonic()
    op = chart_operator.install(
        kubectl, tool("helm"), node_image("turnpike"), "--values", str(values)
    )
    try:
        op.wait_ready()
        eventually(
            "two gateway pods Ready",
            lambda: len([p for p in op.gateway_pods() if chart_operator.ready(p)]) == 2 or None,
            timeout=180,
            interval=1,
        )
    except Exception:
        op.uninstall()
        raise
    request.config.stash.setdefault(FIGURES, []).append(
        f"helm install with the gateway: operator and gateway pods Ready "
        f"{time.monotonic() - started:.1f}s after install"
    )
    yield op
    op.uninstall()


@pytest.fixture(scope="module")
def models(kubectl: Kubectl) -> Iterator[Kubectl]:
    """One namespace for the module's ModelDeployments, with the model repository claim."""
    name = f"gw-{uuid.uuid4().hex[:5]}"
    kubectl.run("create", "namespace", name)
    kube = kubectl.in_namespace(name)
    local_volume(kube, "models")
    yield kube
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)
    kubectl.run("delete", "pv", f"{name}-models", "--wait=false", check=False)


def md_status(kube: Kubectl, name: str) -> dict[str, Any]:
    return dict(kube.get("md", name).get("status") or {})


def infer_body(service_time_ms: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}]
    }
    if service_time_ms is not None:
        body["parameters"] = {"service_time_ms": service_time_ms}
    return body


def v2_url(base: str, namespace: str, name: str) -> str:
    """The KServe v2 infer URL of one ModelDeployment by NAMESPACE/NAME (slash as %2F)."""
    return f"{base}/v2/models/{namespace}%2F{name}/infer"


async def _timed_post(
    session: aiohttp.ClientSession, url: URL, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, float, str]:
    started = time.monotonic()
    async with session.post(url, json=body, headers=headers) as response:
        text = await response.text()
        return response.status, time.monotonic() - started, text


def _session(timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        trust_env=False,
        connector=aiohttp.TCPConnector(limit=0),
    )


def post_many(url: str, count: int, timeout_s: float) -> list[tuple[int, float, str]]:
    async def run() -> list[tuple[int, float, str]]:
        async with _session(timeout_s) as session:
            target = URL(url, encoded=True)
            return await asyncio.gather(
                *(_timed_post(session, target, infer_body(), {}) for _ in range(count))
            )

    return asyncio.run(run())


# ---------------------------------------------------------------- scale to zero


def test_idle_to_zero_and_a_hundred_requests_wake_it(
    release: ChartOperator, models: Kubectl, figure: Callable[[str], None]
) -> None:
    kube = models
    namespace = kube.namespace
    assert namespace is not None
    kube.apply(
        real_md(
            "sleepy-zero",
            "pvc://models",
            minReplicas=0,
            maxReplicas=2,
            autoscaling={
                "enabled": True,
                "target": 3,
                "scrapeIntervalSeconds": 1,
                "panicWindowSeconds": 2,
                "stabilizationWindowSeconds": 10,
                "scaleDownPeriodSeconds": 5,
                "scaleToZeroIdleSeconds": IDLE_S,
            },
        )
    )
    # A new deployment starts one replica even at minReplicas 0.
    kube.run("wait", "--for=condition=Ready", "--timeout=180s", "md/sleepy-zero", timeout=190)
    url = v2_url(release.gateway_address(), namespace, "sleepy-zero")
    first = post_many(url, 1, 30)
    assert first[0][0] == 200, first
    last_request = time.monotonic()

    def at_zero() -> dict[str, Any] | None:
        status = md_status(kube, "sleepy-zero")
        scaled = status.get("desiredReplicas") == 0 and not status.get("readyReplicas")
        pods = kube.items("pods", "-l", "turnpike.dev/model-deployment=sleepy-zero")
        return status if scaled and not pods else None

    status = eventually("the deployment idle at zero", at_zero, timeout=IDLE_S + 150, interval=1)
    idled_after = time.monotonic() - last_request
    reason = (status.get("lastScale") or {}).get("reason", "")
    assert "idle" in reason, status.get("lastScale")
    assert idled_after >= IDLE_S

    started = time.monotonic()
    results = post_many(url, CONCURRENT_AT_ZERO, 240)
    statuses = [code for code, _, _ in results]
    latencies = sorted(seconds for _, seconds, _ in results)
    cold = eventually(
        "status.coldStart measured",
        lambda: (md_status(kube, "sleepy-zero").get("coldStart") or {}).get("seconds"),
        timeout=60,
    )
    figure(
        f"scale to zero: idle to 0 after {idled_after:.1f}s (idle window {IDLE_S}s); "
        f"{CONCURRENT_AT_ZERO} requests at zero: {statuses.count(200)} OK, first answer "
        f"{latencies[0]:.1f}s, median {statistics.median(latencies):.1f}s, slowest "
        f"{latencies[-1]:.1f}s; status.coldStart {cold}s; whole burst "
        f"{time.monotonic() - started:.1f}s"
    )
    failures = [text[:200] for code, _, text in results if code != 200]
    assert not failures, failures[:3]
    # The first request is answered within the cold start the operator measured, plus
    # what separates the two clocks: a reconcile, a readiness probe period, one request.
    assert latencies[0] <= float(cold) + 3.0


# ---------------------------------------------------------------- tiers


async def _tenant(
    session: aiohttp.ClientSession,
    url: str,
    tenant: str,
    clients: int,
    until: float,
    out: dict[str, list[Any]],
) -> None:
    target = URL(url, encoded=True)  # keeps the %2F of NAMESPACE%2FNAME

    async def client() -> None:
        while time.monotonic() < until:
            code, seconds, _ = await _timed_post(
                session, target, infer_body(), {TENANT_HEADER: tenant}
            )
            out[tenant].append((code, seconds))
            if code == 429:
                await asyncio.sleep(0.05)  # what a well-behaved client does on Retry-After

    await asyncio.gather(*(client() for _ in range(clients)))


def test_reserved_keeps_its_share_and_slo_while_spot_is_shed(
    release: ChartOperator, models: Kubectl, figure: Callable[[str], None]
) -> None:
    kube = models
    namespace = kube.namespace
    assert namespace is not None
    # One replica, fixed: saturated at its maximum. 50 ms a request, one at a time.
    # Its SLO is measured by the gateways (method gateway), every request exactly.
    kube.apply(
        real_md(
            "sleepy-shared",
            "pvc://models",
            replicas=1,
            slo={"thresholdMilliseconds": SLO_MS, "objectivePercent": 50, "windowMinutes": 60},
            autoscaling={"scrapeIntervalSeconds": 1},
        )
    )
    kube.run("wait", "--for=condition=Ready", "--timeout=180s", "md/sleepy-shared", timeout=190)
    # Through one gateway pod: shares are enforced per gateway replica.
    url = v2_url(release.gateway_address(), namespace, "sleepy-shared")
    assert post_many(url, 1, 30)[0][0] == 200
    seconds = 40

    async def run() -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"acme": [], "bargain": []}
        until = time.monotonic() + seconds
        async with _session(30) as session:
            await asyncio.gather(
                _tenant(session, url, "acme", 3, until, out),
                _tenant(session, url, "bargain", 12, until, out),
            )
        return out

    out = asyncio.run(run())
    reserved_ok = [s for code, s in out["acme"] if code == 200]
    spot_ok = [s for code, s in out["bargain"] if code == 200]
    reserved_shed = sum(1 for code, _ in out["acme"] if code == 429)
    spot_shed = sum(1 for code, _ in out["bargain"] if code == 429)
    others = [code for code, _ in out["acme"] + out["bargain"] if code not in (200, 429)]
    share = len(reserved_ok) / max(1, len(reserved_ok) + len(spot_ok))
    p99 = statistics.quantiles(reserved_ok, n=100)[98] * 1000 if len(reserved_ok) > 1 else 0.0
    figure(
        f"tiers on one saturated replica, {seconds}s: reserved {len(reserved_ok)} served, "
        f"{reserved_shed} shed, p99 {p99:.0f} ms (SLO {SLO_MS} ms); spot {len(spot_ok)} "
        f"served, {spot_shed} shed; reserved share {share:.1%} (weight 3:1 = 75%)"
    )
    assert not others, others[:5]
    assert spot_shed > 0 and reserved_shed == 0
    assert p99 <= SLO_MS
    assert abs(share - 0.75) <= 0.05

    # The SLO meter: every request the gateway relayed (the first one included), and
    # within the threshold as the gateway timed them, which the client's clock (a
    # little later, by the network) agrees with.
    served = [*reserved_ok, *spot_ok]
    relayed = len(served) + 1
    client = 100.0 * (sum(1 for s in served if s * 1000 <= SLO_MS) + 1) / relayed
    measured: dict[str, Any] = {}

    def counted() -> dict[str, Any] | None:
        measured.update(md_status(kube, "sleepy-shared").get("slo") or {})
        return measured if measured.get("requests", 0) >= relayed else None

    slo = eventually(f"status.slo to count {relayed} requests", counted, timeout=60)
    figure(
        f"SLO measured by the gateway: {slo['requests']} requests, attainment "
        f"{slo['attainmentPercent']:.2f}% vs the client's {client:.2f}%"
    )
    assert slo["method"] == "gateway"
    assert slo["requests"] == relayed
    assert abs(slo["attainmentPercent"] - client) <= 2.0


# ---------------------------------------------------------------- OpenAI


def test_openai_completions_and_chat_reach_a_streaming_model(
    release: ChartOperator, models: Kubectl, figure: Callable[[str], None]
) -> None:
    kube = models
    namespace = kube.namespace
    assert namespace is not None
    kube.apply(real_md("tokens", "pvc://models", model={"name": "tokens"}, replicas=1))
    kube.run("wait", "--for=condition=Ready", "--timeout=180s", "md/tokens", timeout=190)
    base = release.gateway_address()

    async def run() -> tuple[dict[str, Any], list[str], dict[str, Any]]:
        async with _session(60) as session:
            async with session.post(
                f"{base}/v1/completions",
                json={"model": "tokens", "prompt": "hello world", "max_tokens": 4},
            ) as response:
                assert response.status == 200, await response.text()
                plain = await response.json()
            events: list[str] = []
            async with session.post(
                f"{base}/v1/completions",
                json={"model": "tokens", "prompt": "a b c", "max_tokens": 5, "stream": True},
            ) as response:
                assert response.status == 200, await response.text()
                assert response.headers["Content-Type"].startswith("text/event-stream")
                async for line in response.content:
                    text = line.decode().strip()
                    if text.startswith("data: "):
                        events.append(text.removeprefix("data: "))
            async with session.post(
                f"{base}/v1/chat/completions",
                json={
                    "model": f"{namespace}/tokens",
                    "messages": [{"role": "user", "content": "hi there"}],
                    "max_tokens": 3,
                },
            ) as response:
                assert response.status == 200, await response.text()
                chat = await response.json()
        return plain, events, chat

    plain, events, chat = asyncio.run(run())
    assert plain["choices"][0]["text"] == " hello world hello world"
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0].get("text") or "" for c in chunks)
    assert streamed == " a b c a b"
    assert len([c for c in chunks if c["choices"][0].get("text")]) == 5  # one event per token
    content = chat["choices"][0]["message"]["content"]
    assert chat["object"] == "chat.completion" and len(content.split()) == 3
    figure(
        f"OpenAI through the gateway: completion {plain['choices'][0]['text']!r}; "
        f"stream of {len(chunks)} events then [DONE]; chat {content!r}"
    )
