"""`make bench-gateway`: what `turnpike gateway` costs and what its routing buys, next to nginx.

One run, against the same real Tritons (the CPU build of ``hack/tritonlocal.py``
on distinct 127.0.0.x addresses), measures three things and prints them; it
never asserts a number, because the machine decides them:

1. **Added latency.** Sequential small ``POST /v2/models/sleepy/infer``
   requests (service time 0) straight to Triton, through the gateway and through
   nginx, each target once per round in a freshly shuffled order, so that drift
   (another process waking up, CPU frequency) hits all three alike. Reported:
   p50 and p99 per target, and each proxy's p50/p99 minus the direct ones.
2. **Throughput per core.** Closed-loop clients (32 in flight) for ~10 s per
   target, in two alternated halves; the proxy's CPU seconds come from
   ``/proc/PID/stat`` (utime + stime; nginx: master and workers), so the figure
   is requests per CPU-second *of the proxy*. The client, the proxy and Triton
   share the machine's cores, so requests/s is a property of the whole box;
   requests per proxy CPU-second is the part that belongs to the proxy.
3. **Routing.** Three Tritons, each executing one request at a time (a single
   model instance, no batching: checked on the live server), and an open-loop
   Poisson arrival sequence at ~70 % of their capacity with exponentially
   distributed service times (mean 30 ms) passed per request as the
   ``service_time_ms`` parameter. The sequence is generated once from a fixed
   seed and replayed unchanged for every variant: the gateway's
   least-outstanding, round-robin and random pickers, nginx ``least_conn`` and
   nginx round-robin, plus least-outstanding with the scrape of Triton's queue
   off (a diagnostic: it separates the picker from the scraped reading, which
   is up to a scrape interval old). Latency counts from the *scheduled* arrival, so a client
   that falls behind cannot hide queueing (no coordinated omission).

The model is ``hack/triton/model_repository/sleepy``, which takes a request's
own ``service_time_ms`` parameter over its configured service time.

nginx is found on PATH or at /usr/sbin/nginx and runs as a non-daemon child with
its own prefix, configuration, pid file, logs and temp paths in a temporary
directory; without it the gateway parts still run. Everything listens on and
talks to 127.0.0.0/8 only; every loop is bounded in count and in time.

    python bench/gateway.py                  # the full run (about 7 min)
    python bench/gateway.py --quick          # a smoke (about 80 s)
    python bench/gateway.py --json out.json  # also write the results
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import datetime
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO)]

from hack import tritonlocal  # noqa: E402
from hack.ports import free_port  # noqa: E402

MODEL = tritonlocal.MODEL
SERVICE_PARAMETER = "service_time_ms"
NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")
NGINX_INSTALL_HINT = (
    "apt-get install -y --no-install-recommends nginx-light (or `make system-deps`)"
)
SEED = 20261207
LISTEN_IP = "127.0.0.1"

# --- pure helpers (tests/unit/test_bench_gateway.py) ------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks.

    The same definition as numpy's default, so numbers here can be checked with
    numpy; raises ValueError for no values, because a percentile of nothing would
    print as a number that was never measured.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is not in 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Summary:
    """Latency of one target in milliseconds; None where there were no successes."""

    count: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None


def summarize(latencies_s: Sequence[float], errors: int = 0) -> Summary:
    if not latencies_s:
        return Summary(0, errors, None, None, None, None)
    return Summary(
        count=len(latencies_s),
        errors=errors,
        p50_ms=percentile(latencies_s, 50) * 1000.0,
        p99_ms=percentile(latencies_s, 99) * 1000.0,
        mean_ms=sum(latencies_s) / len(latencies_s) * 1000.0,
        max_ms=max(latencies_s) * 1000.0,
    )


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request of the replayed sequence: when it is sent and how long Triton works."""

    at_s: float
    service_ms: float


def arrival_sequence(
    *,
    rate_per_s: float,
    mean_service_ms: float,
    duration_s: float,
    seed: int,
    max_count: int = 1_000_000,
    max_service_ms: float = 60_000.0,
) -> tuple[Arrival, ...]:
    """Poisson arrivals over ``duration_s`` with exponential service times, from ``seed``.

    One generator draws both, in a fixed order, so one seed is one sequence on
    every run and every machine: the variants are compared on identical work,
    not on different samples of the same distribution. Service times are rounded
    to microseconds (the wire carries them as JSON) and capped at the model's
    limit; ``max_count`` bounds the sequence whatever the rate.
    """
    if rate_per_s <= 0 or mean_service_ms <= 0 or duration_s <= 0:
        raise ValueError("rate, mean service time and duration must be positive")
    rng = random.Random(seed)
    arrivals: list[Arrival] = []
    at = 0.0
    while len(arrivals) < max_count:
        at += rng.expovariate(rate_per_s)
        if at >= duration_s:
            break
        service = min(rng.expovariate(1.0 / mean_service_ms), max_service_ms)
        arrivals.append(Arrival(round(at, 6), round(service, 3)))
    return tuple(arrivals)


def infer_body(service_ms: float | None = None) -> bytes:
    """A small KServe v2 infer request for sleepy; ``service_ms`` goes in ``parameters``."""
    body: dict[str, Any] = {
        "inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    if service_ms is not None:
        body["parameters"] = {SERVICE_PARAMETER: service_ms}
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class NginxSite:
    """One ``server`` of the nginx peer: a loopback listener in front of an upstream group."""

    upstream: str
    port: int
    backends: tuple[str, ...]  # host:port
    balance: str = "round-robin"  # or "least_conn"


def render_nginx_conf(prefix: Path, sites: Sequence[NginxSite]) -> str:
    """nginx configured as a competent engineer would put it in front of Triton.

    One worker (the gateway is one process on one event loop, so per-core figures
    compare like with like); HTTP/1.1 to the upstream with the ``Connection``
    header cleared and an idle pool of 64 connections per worker, so requests
    never pay a TCP handshake; client and upstream connections reused for up to
    100,000 requests (the 1,000 default would reconnect every second at the
    throughput phase's rate); no access log (the gateway logs no access either).
    Every path nginx writes (pid, error log, temp directories) lies under
    ``prefix``.
    """
    out = [
        "# Rendered by bench/gateway.py; run with -p PREFIX -c THIS -g 'daemon off;'.",
        "worker_processes 1;",
        f"pid {prefix}/nginx.pid;",
        f"error_log {prefix}/error.log warn;",
        "events {",
        "    worker_connections 4096;",
        "}",
        "http {",
        "    access_log off;",
        f"    client_body_temp_path {prefix}/client_body;",
        f"    proxy_temp_path {prefix}/proxy;",
        f"    fastcgi_temp_path {prefix}/fastcgi;",
        f"    uwsgi_temp_path {prefix}/uwsgi;",
        f"    scgi_temp_path {prefix}/scgi;",
        "    keepalive_timeout 75s;",
        "    keepalive_requests 100000;",
        "    client_max_body_size 64m;",
    ]
    for site in sites:
        if site.balance not in ("round-robin", "least_conn"):
            raise ValueError(f"unknown nginx balance {site.balance!r}")
        if not site.backends:
            raise ValueError(f"upstream {site.upstream} has no backend")
        out.append(f"    upstream {site.upstream} {{")
        if site.balance == "least_conn":
            out.append("        least_conn;")
        out += [f"        server {backend};" for backend in site.backends]
        out += [
            "        keepalive 64;",
            "        keepalive_requests 100000;",
            "        keepalive_timeout 60s;",
            "    }",
            "    server {",
            f"        listen {LISTEN_IP}:{site.port};",
            "        location / {",
            f"            proxy_pass http://{site.upstream};",
            "            proxy_http_version 1.1;",
            '            proxy_set_header Connection "";',
            "            proxy_read_timeout 600s;",
            "        }",
            "    }",
        ]
    out.append("}")
    return "\n".join(out) + "\n"


def single_instance(model_config: Mapping[str, Any]) -> bool:
    """Whether Triton's model config (``GET /v2/models/M/config``) runs one request at a time.

    One instance in total and no dynamic batcher: then a Triton replica is a
    single-server queue and routing decides how long requests wait.
    """
    groups = model_config.get("instance_group") or []
    count = sum(int(group.get("count", 1)) for group in groups) if groups else 0
    return count == 1 and not model_config.get("dynamic_batching")


_SUCCESS = re.compile(
    r"^nv_inference_request_success\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+-]+)\s*$", re.M
)


def success_count(metrics_text: str, model: str) -> float:
    """Sum of ``nv_inference_request_success`` for ``model`` in a Triton /metrics page."""
    total = 0.0
    for match in _SUCCESS.finditer(metrics_text):
        if f'model="{model}"' in match.group("labels"):
            total += float(match.group("value"))
    return total


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime from the text of ``/proc/PID/stat`` (the comm may hold spaces)."""
    fields = stat[stat.rfind(")") + 2 :].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return int(fields[11]) + int(fields[12])


# --- the edge: processes, /proc, HTTP -------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) of ``pids``; a process that is gone counts 0."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            ticks += stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
    return ticks / CLK_TCK


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat: how saturated the box was."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = (float(x) for x in Path("/proc/loadavg").read_text().split()[:3])
    return one, five, fifteen


def find_nginx() -> str | None:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _http_json(url: str, timeout_s: float = 2.0) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def _deathsig() -> Callable[[], None] | None:
    """SIGTERM the child if this process dies, so a killed run leaves no proxy behind."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return preexec


class Child:
    """A proxy process (gateway or nginx) with its log; stopped in ``close``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_deathsig(),
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_pids(self) -> list[int]:
        """The process and its children: for nginx the master and its worker."""
        return [self.pid, *children(self.pid)]

    def wait_http(self, url: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if tritonlocal._http_get(url, 1.0) == 200:
                return
            time.sleep(0.05)  # poll interval, bounded by the deadline
        raise RuntimeError(
            f"{self.name} not serving {url} within {timeout_s:g}s:\n{self.log_tail()}"
        )

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                # QUIT is nginx's graceful stop, TERM its fast one; TERM is enough here.
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # Still unreaped, so the group id cannot have been reused: kill it whole.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def start_gateway(
    workdir: Path,
    tritons: Sequence[tritonlocal.TritonServer],
    routing: str,
    config: Path | None,
    scrape_interval_s: float = 1.0,
) -> tuple[Child, str]:
    """``turnpike gateway`` in front of ``tritons``; by default as shipped (scrape every 1 s).

    ``scrape_interval_s=0`` turns the scrape of Triton's queue off, which leaves
    least-outstanding with the gateway's own in-flight counts only.
    """
    port = free_port(LISTEN_IP)
    endpoints = ",".join(f"{MODEL}={t.ip}:{t.http_port}@{t.metrics_port}" for t in tritons)
    argv = [
        sys.executable,
        "-m",
        "turnpike.cli",
        "gateway",
        "--listen",
        f"{LISTEN_IP}:{port}",
        "--static-endpoints",
        endpoints,
        "--routing",
        routing,
        "--scrape-interval",
        f"{scrape_interval_s:g}",
        "--log-level",
        "warning",
    ]
    if config is not None:
        argv += ["--config", str(config)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "operator"), env.get("PYTHONPATH", "")) if p
    )
    log = workdir / f"gateway-{routing}-scrape{scrape_interval_s:g}.log"
    child = Child(f"gateway ({routing})", argv, log, env)
    url = f"http://{LISTEN_IP}:{port}"
    try:
        child.wait_http(f"{url}/healthz")
    except BaseException:
        child.close()
        raise
    return child, url


def start_nginx(nginx: str, prefix: Path, sites: Sequence[NginxSite]) -> Child:
    prefix.mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o755)  # the worker runs as nobody and must reach its temp paths
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf(prefix, sites))
    argv = [
        nginx,
        "-p",
        f"{prefix}/",
        "-c",
        str(conf),
        "-e",
        str(prefix / "error.log"),
        "-g",
        "daemon off;",
    ]
    child = Child("nginx", argv, prefix / "stdout.log", dict(os.environ))
    try:
        for site in sites:
            child.wait_http(f"http://{LISTEN_IP}:{site.port}/v2/health/ready", timeout_s=15)
    except BaseException:
        child.close()
        raise
    return child


# --- load -------------------------------------------------------------------------------

JSON_HEADERS = {"Content-Type": "application/json"}


def new_client(limit: int, timeout_s: float) -> aiohttp.ClientSession:
    """A keep-alive client pool: no environment proxies, bounded connections and time."""
    return aiohttp.ClientSession(
        trust_env=False,
        connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=60.0),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def infer(session: aiohttp.ClientSession, url: str, body: bytes) -> str | None:
    """One request; None when it succeeded, else what went wrong (for the error count)."""
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as response:
            await response.read()
            return None if response.status == 200 else f"http {response.status}"
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as exc:
        return type(exc).__name__


def infer_url(base: str) -> str:
    return f"{base}/v2/models/{MODEL}/infer"


@dataclass
class LatencyResult:
    per_target: dict[str, Summary]
    added_ms: dict[str, dict[str, float | None]]
    rounds: int
    error_kinds: dict[str, dict[str, int]]


async def latency_phase(
    targets: Mapping[str, str], *, rounds: int, warmup: int, deadline_s: float, seed: int
) -> LatencyResult:
    """Sequential requests, every target once per round in a shuffled order.

    Sequential, so each sample is one request's round trip with nothing queued
    behind it: the latency a proxy adds when it is not busy.
    """
    rng = random.Random(seed)
    names = list(targets)
    body = infer_body()
    samples: dict[str, list[float]] = {n: [] for n in names}
    errors: dict[str, dict[str, int]] = {n: {} for n in names}
    sessions = {n: new_client(limit=1, timeout_s=10.0) for n in names}
    done = 0
    try:
        for name in names:
            for _ in range(warmup):
                await infer(sessions[name], infer_url(targets[name]), body)
        deadline = time.monotonic() + deadline_s
        for _ in range(rounds):
            done += 1
            order = names[:]
            rng.shuffle(order)
            for name in order:
                began = time.perf_counter()
                failed = await infer(sessions[name], infer_url(targets[name]), body)
                elapsed = time.perf_counter() - began
                if failed is None:
                    samples[name].append(elapsed)
                else:
                    errors[name][failed] = errors[name].get(failed, 0) + 1
            if time.monotonic() > deadline:
                break
    finally:
        for session in sessions.values():
            await session.close()
    per_target = {n: summarize(samples[n], sum(errors[n].values())) for n in names}
    direct = per_target.get("direct")
    added: dict[str, dict[str, float | None]] = {}
    for name, summary in per_target.items():
        if name == "direct" or direct is None:
            continue
        added[name] = {
            "p50_ms": _minus(summary.p50_ms, direct.p50_ms),
            "p99_ms": _minus(summary.p99_ms, direct.p99_ms),
        }
    return LatencyResult(per_target, added, done, errors)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


@dataclass
class ThroughputResult:
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    proxy_cpu_s: float | None
    requests_per_proxy_cpu_s: float | None
    proxy_cores_used: float | None
    client_cpu_s: float
    machine_busy: float


async def closed_loop(
    url: str, *, concurrency: int, duration_s: float, max_requests: int
) -> tuple[int, int, float]:
    """``concurrency`` workers, each sending its next request when the last one returns."""
    body = infer_body()
    ok = failed = 0
    stop_at = time.monotonic() + duration_s
    session = new_client(limit=concurrency, timeout_s=10.0)

    async def worker() -> None:
        nonlocal ok, failed
        while time.monotonic() < stop_at and ok + failed < max_requests:
            if await infer(session, url, body) is None:
                ok += 1
            else:
                failed += 1

    began = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await session.close()
    return ok, failed, time.perf_counter() - began


async def throughput_phase(
    targets: Mapping[str, str],
    cpu_pids: Mapping[str, Callable[[], list[int]]],
    *,
    concurrency: int,
    seconds_per_target: float,
    max_requests: int,
) -> dict[str, ThroughputResult]:
    """Each target for ``seconds_per_target``, in two halves run in opposite orders."""
    names = list(targets)
    totals: dict[str, dict[str, float]] = {
        n: {"ok": 0, "failed": 0, "wall": 0, "cpu": 0, "client": 0, "busy": 0, "all": 0}
        for n in names
    }
    # Warm the pools (and the gateway's scrape of Triton) before anything counts.
    for name in names:
        await closed_loop(
            infer_url(targets[name]),
            concurrency=concurrency,
            duration_s=1.0,
            max_requests=max_requests,
        )
    for order in (names, names[::-1]):
        for name in order:
            pids = cpu_pids[name]() if name in cpu_pids else []
            cpu0 = process_cpu_s(pids)
            client0 = time.process_time()
            busy0, all0 = machine_busy_ticks()
            ok, failed, wall = await closed_loop(
                infer_url(targets[name]),
                concurrency=concurrency,
                duration_s=seconds_per_target / 2,
                max_requests=max_requests,
            )
            busy1, all1 = machine_busy_ticks()
            t = totals[name]
            t["ok"] += ok
            t["failed"] += failed
            t["wall"] += wall
            t["cpu"] += process_cpu_s(pids) - cpu0
            t["client"] += time.process_time() - client0
            t["busy"] += busy1 - busy0
            t["all"] += all1 - all0
    results = {}
    for name, t in totals.items():
        measured = name in cpu_pids
        results[name] = ThroughputResult(
            requests=int(t["ok"]),
            errors=int(t["failed"]),
            wall_s=t["wall"],
            requests_per_s=t["ok"] / t["wall"] if t["wall"] else 0.0,
            proxy_cpu_s=t["cpu"] if measured else None,
            requests_per_proxy_cpu_s=(t["ok"] / t["cpu"]) if measured and t["cpu"] > 0 else None,
            proxy_cores_used=t["cpu"] / t["wall"] if measured and t["wall"] else None,
            client_cpu_s=t["client"],
            machine_busy=t["busy"] / t["all"] if t["all"] else 0.0,
        )
    return results


@dataclass
class RoutingResult:
    summary: Summary
    error_kinds: dict[str, int]
    share: list[float]  # fraction of successes per Triton, from Triton's own counters
    max_send_lag_ms: float  # how late the client sent its worst request


async def open_loop(
    url: str,
    arrivals: Sequence[Arrival],
    *,
    request_timeout_s: float,
    deadline_s: float,
) -> tuple[list[float], dict[str, int], float]:
    """Replay ``arrivals`` against ``url``; latency from each request's scheduled time."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lag = 0.0
    session = new_client(limit=1024, timeout_s=request_timeout_s)

    async def one(arrival: Arrival, scheduled: float) -> None:
        failed = await infer(session, url, infer_body(arrival.service_ms))
        if failed is None:
            latencies.append(time.perf_counter() - scheduled)
        else:
            errors[failed] = errors.get(failed, 0) + 1

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.05
    try:
        for arrival in arrivals:
            scheduled = start + arrival.at_s
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, time.perf_counter() - scheduled)
            tasks.append(asyncio.create_task(one(arrival, scheduled)))
        remaining = max(1.0, start + deadline_s - time.perf_counter())
        _, pending = await asyncio.wait(tasks, timeout=remaining) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        if pending:
            errors["unfinished"] = errors.get("unfinished", 0) + len(pending)
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await session.close()
    return latencies, errors, lag * 1000.0


# Starts a variant's proxy (if it has its own) and returns its URL and how to stop it.
Starter = Callable[[], Awaitable[tuple[str, Callable[[], None]]]]


async def routing_phase(
    variants: Mapping[str, Starter],
    tritons: Sequence[tritonlocal.TritonServer],
    arrivals: Sequence[Arrival],
    *,
    duration_s: float,
) -> dict[str, RoutingResult]:
    """Each variant replays the same ``arrivals``; ``variants`` start (and stop) its proxy."""
    results: dict[str, RoutingResult] = {}
    warm = infer_body(0.0)
    for name, start in variants.items():
        url, stop = await start()
        try:
            async with new_client(limit=8, timeout_s=10.0) as session:
                for _ in range(30):  # open the proxy's upstream connections first
                    await infer(session, infer_url(url), warm)
            before = [success_count(t.metrics_text(), MODEL) for t in tritons]
            latencies, errors, lag_ms = await open_loop(
                infer_url(url), arrivals, request_timeout_s=60.0, deadline_s=duration_s + 60.0
            )
            after = [success_count(t.metrics_text(), MODEL) for t in tritons]
        finally:
            stop()
        served = [a - b for a, b in zip(after, before, strict=True)]
        total = sum(served) or 1.0
        results[name] = RoutingResult(
            summary=summarize(latencies, sum(errors.values())),
            error_kinds=errors,
            share=[s / total for s in served],
            max_send_lag_ms=lag_ms,
        )
        print(f"  {name}: {_fmt_summary(results[name].summary)}", flush=True)
        await asyncio.sleep(0.5)  # let the Tritons' queues settle between variants
    return results


# --- the run ----------------------------------------------------------------------------


@dataclass
class Settings:
    quick: bool
    latency_rounds: int
    latency_warmup: int
    throughput_s: float
    concurrency: int
    routing_s: float
    mean_service_ms: float
    utilisation: float
    seed: int
    gateway_config: Path | None
    json_path: Path | None


@dataclass
class Report:
    date: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    latency: dict[str, Any] | None = None
    throughput: dict[str, Any] | None = None
    routing: dict[str, Any] | None = None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _load() -> str:
    """The load average now, printed at each phase so interference shows where it hit."""
    return "load average " + " ".join(f"{x:.2f}" for x in load_average())


def _fmt_summary(s: Summary) -> str:
    return (
        f"p50 {_fmt(s.p50_ms)} ms, p99 {_fmt(s.p99_ms)} ms, mean {_fmt(s.mean_ms)} ms, "
        f"{s.count} ok, {s.errors} errors"
    )


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops its processes."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(settings: Settings) -> Report:
    load_before = load_average()
    report = Report(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        machine={
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "kernel": os.uname().release,
        },
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
    )
    if load_before[0] > 0.8:
        note = (
            f"1-minute load average {load_before[0]:.2f} at the start: something else is "
            "running; numbers will be noisy"
        )
        print(f"NOTE: {note}", flush=True)
        report.notes.append(note)
    nginx = find_nginx()
    if nginx is None:
        note = f"nginx not found (PATH, /usr/sbin/nginx): install it with {NGINX_INSTALL_HINT}"
        print(f"NOTE: {note}; running the gateway parts only.", flush=True)
        report.notes.append(note)
    else:
        version = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
        report.machine["nginx"] = (version.stderr or version.stdout).strip()

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gateway-")))
        repository = tritonlocal.MODEL_REPOSITORY
        layout = tritonlocal.prepare()
        tritons: list[tritonlocal.TritonServer] = []
        used: list[str] = []
        for _ in range(3):
            ip = tritonlocal.pick_loopback_ip(avoid=used)
            used.append(ip)
            triton = tritonlocal.TritonServer(
                ip=ip,
                model_repository=repository,
                service_time_ms=0,
                layout=layout,
                log_path=workdir / f"triton-{ip}.log",
            )
            triton.start()
            stack.callback(triton.stop)
            tritons.append(triton)
        for triton in tritons:
            config = _http_json(f"{triton.http_url}/v2/models/{MODEL}/config")
            if not single_instance(config):
                raise SystemExit(
                    f"{triton.http_address}: {MODEL} does not run one request at "
                    f"a time: {config.get('instance_group')}"
                )
        report.machine["triton"] = {
            "addresses": [t.http_address for t in tritons],
            "instance_group": config.get("instance_group"),
            "dynamic_batching": bool(config.get("dynamic_batching")),
        }
        print(
            f"3 Tritons ({MODEL}, one instance each): {', '.join(t.http_address for t in tritons)}",
            flush=True,
        )

        sites: list[NginxSite] = []
        nginx_child: Child | None = None
        if nginx is not None:
            backends = tuple(t.http_address for t in tritons)
            sites = [
                NginxSite("single", free_port(LISTEN_IP), backends[:1]),
                NginxSite("fleet_least_conn", free_port(LISTEN_IP), backends, "least_conn"),
                NginxSite("fleet_round_robin", free_port(LISTEN_IP), backends),
            ]
            nginx_child = start_nginx(nginx, workdir / "nginx", sites)
            stack.callback(nginx_child.close)

        # Phases 1 and 2: one Triton, one gateway, one nginx server.
        gateway, gateway_url = start_gateway(
            workdir, tritons[:1], "least-outstanding", settings.gateway_config
        )
        try:
            targets = {"direct": tritons[0].http_url, "gateway": gateway_url}
            pids: dict[str, Callable[[], list[int]]] = {"gateway": gateway.cpu_pids}
            if nginx_child is not None:
                targets["nginx"] = f"http://{LISTEN_IP}:{sites[0].port}"
                pids["nginx"] = nginx_child.cpu_pids
            print(
                f"\n1. added latency: {settings.latency_rounds} sequential rounds over "
                f"{', '.join(targets)} (shuffled per round), service time 0; {_load()}",
                flush=True,
            )
            latency = asyncio.run(
                latency_phase(
                    targets,
                    rounds=settings.latency_rounds,
                    warmup=settings.latency_warmup,
                    deadline_s=max(60.0, settings.latency_rounds * 0.1),
                    seed=settings.seed,
                )
            )
            report.latency = asdict(latency)
            _print_latency(latency)

            print(
                f"\n2. throughput: {settings.concurrency} in flight, closed loop, "
                f"{settings.throughput_s:g} s per target in two alternated halves; {_load()}",
                flush=True,
            )
            throughput = asyncio.run(
                throughput_phase(
                    targets,
                    pids,
                    concurrency=settings.concurrency,
                    seconds_per_target=settings.throughput_s,
                    max_requests=1_000_000,
                )
            )
            report.throughput = {k: asdict(v) for k, v in throughput.items()}
            _print_throughput(throughput)
        finally:
            gateway.close()

        # Phase 3: routing over the three Tritons.
        direct_p50_ms = latency.per_target["direct"].p50_ms or 1.0
        per_request_ms = settings.mean_service_ms + direct_p50_ms
        rate = settings.utilisation * len(tritons) * 1000.0 / per_request_ms
        arrivals = arrival_sequence(
            rate_per_s=rate,
            mean_service_ms=settings.mean_service_ms,
            duration_s=settings.routing_s,
            seed=settings.seed,
        )
        mean_drawn = sum(a.service_ms for a in arrivals) / max(1, len(arrivals))
        print(
            f"\n3. routing: {len(arrivals)} Poisson arrivals in {settings.routing_s:g} s "
            f"({rate:.1f}/s, seed {settings.seed}); exponential service, mean "
            f"{settings.mean_service_ms:g} ms (drawn: {mean_drawn:.1f} ms); capacity taken as "
            f"3 x 1000 / ({settings.mean_service_ms:g} + {direct_p50_ms:.2f} direct p50) ms "
            f"-> offered load {settings.utilisation:.0%}; {_load()}",
            flush=True,
        )

        def gateway_variant(routing: str, scrape_interval_s: float = 1.0) -> Starter:
            async def start() -> tuple[str, Callable[[], None]]:
                child, url = start_gateway(
                    workdir, tritons, routing, settings.gateway_config, scrape_interval_s
                )
                return url, child.close

            return start

        def nginx_variant(site: NginxSite) -> Starter:
            async def start() -> tuple[str, Callable[[], None]]:
                return f"http://{LISTEN_IP}:{site.port}", lambda: None

            return start

        variants: dict[str, Starter] = {
            "gateway least-outstanding": gateway_variant("least-outstanding"),
            # Diagnostic: the same picker on its own in-flight counts only, to show
            # what the scraped (seconds-old) Triton queue adds or costs.
            "gateway least-outstanding, no scrape": gateway_variant("least-outstanding", 0.0),
            "gateway round-robin": gateway_variant("round-robin"),
            "gateway random": gateway_variant("random"),
        }
        if nginx_child is not None:
            variants["nginx least_conn"] = nginx_variant(sites[1])
            variants["nginx round-robin"] = nginx_variant(sites[2])
        routing = asyncio.run(
            routing_phase(variants, tritons, arrivals, duration_s=settings.routing_s)
        )
        report.routing = {
            "arrivals": len(arrivals),
            "rate_per_s": rate,
            "mean_service_ms_drawn": mean_drawn,
            "offered_load": settings.utilisation,
            "variants": {k: asdict(v) for k, v in routing.items()},
        }
        _print_routing(routing)
    report.machine["load_average_after"] = load_average()
    return report


def _print_latency(result: LatencyResult) -> None:
    print(
        "| target | requests | errors | p50 ms | p99 ms | mean ms | added p50 ms | added p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, s in result.per_target.items():
        added = result.added_ms.get(name, {})
        print(
            f"| {name} | {s.count} | {s.errors} | {_fmt(s.p50_ms, 3)} | {_fmt(s.p99_ms, 3)} "
            f"| {_fmt(s.mean_ms, 3)} | {_fmt(added.get('p50_ms'), 3) if added else '-'} "
            f"| {_fmt(added.get('p99_ms'), 3) if added else '-'} |"
        )
    for name, added in result.added_ms.items():
        print(f"{name} adds p50 {_fmt(added['p50_ms'], 3)} ms, p99 {_fmt(added['p99_ms'], 3)} ms")
    sys.stdout.flush()


def _print_throughput(results: Mapping[str, ThroughputResult]) -> None:
    print(
        "| target | requests | errors | req/s | proxy CPU s | req per proxy CPU-s "
        "| proxy cores used | client CPU s | machine busy |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r.requests} | {r.errors} | {r.requests_per_s:.0f} "
            f"| {_fmt(r.proxy_cpu_s)} | {_fmt(r.requests_per_proxy_cpu_s, 0)} "
            f"| {_fmt(r.proxy_cores_used)} | {r.client_cpu_s:.2f} | {r.machine_busy:.0%} |"
        )
    print("(client, proxies and Tritons share the machine's cores)", flush=True)


def _print_routing(results: Mapping[str, RoutingResult]) -> None:
    print(
        "| variant | ok | errors | p50 ms | p99 ms | mean ms | max ms | share per Triton "
        "| max send lag ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        s = r.summary
        share = " / ".join(f"{x:.0%}" for x in r.share)
        print(
            f"| {name} | {s.count} | {s.errors} | {_fmt(s.p50_ms, 1)} | {_fmt(s.p99_ms, 1)} "
            f"| {_fmt(s.mean_ms, 1)} | {_fmt(s.max_ms, 1)} | {share} "
            f"| {r.max_send_lag_ms:.1f} |"
        )
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~80 s)")
    parser.add_argument(
        "--json", type=Path, default=None, metavar="FILE", help="also write the results here"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="sequential latency rounds (default 3000, quick 300)",
    )
    parser.add_argument(
        "--throughput-seconds",
        type=float,
        default=None,
        help="closed-loop seconds per target (default 10, quick 2)",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--routing-seconds",
        type=float,
        default=None,
        help="length of the replayed arrival sequence (default 60, quick 8)",
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--gateway-config",
        type=Path,
        default=None,
        help="--config for the gateway (default: none, the shipped defaults)",
    )
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    settings = Settings(
        quick=quick,
        latency_rounds=args.rounds or (300 if quick else 3000),
        latency_warmup=20 if quick else 100,
        throughput_s=args.throughput_seconds or (2.0 if quick else 10.0),
        concurrency=args.concurrency,
        routing_s=args.routing_seconds or (8.0 if quick else 60.0),
        mean_service_ms=30.0,
        utilisation=0.7,
        seed=args.seed,
        gateway_config=args.gateway_config,
        json_path=args.json,
    )
    if not 1 <= settings.latency_rounds <= 100_000:
        parser.error("--rounds must be in 1..100000")
    if not 0.5 <= settings.throughput_s <= 600 or not 0.5 <= settings.routing_s <= 3600:
        parser.error("phase lengths must be in 0.5..600 s (routing 0.5..3600 s)")
    if not 1 <= settings.concurrency <= 1024:
        parser.error("--concurrency must be in 1..1024")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        with _terminate_as_interrupt():
            report = run(settings)
    except KeyboardInterrupt:
        print("interrupted; every process this run started is stopped", file=sys.stderr)
        return 130
    print(
        f"\nload average before {report.machine['load_average_before']}, "
        f"after {report.machine['load_average_after']}"
    )
    if settings.json_path is not None:
        settings.json_path.parent.mkdir(parents=True, exist_ok=True)
        settings.json_path.write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")
        print(f"wrote {settings.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
