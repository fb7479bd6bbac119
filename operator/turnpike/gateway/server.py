"""The gateway's aiohttp application: identify, hold, admit, route, relay, meter.

Each request walks one path (:meth:`Gateway._call`): the tenant's tier from
its headers; the deployment serving the model; held while that deployment has
no ready replica; a slot from its :class:`~turnpike.gateway.admission.Admission`
(waiting in the fair queue when there is none); a replica from the picker;
then the upstream call, relayed as it streams. Every wait is bounded, and
every slot and hold is released in a ``finally``, client disconnects
included (the runner cancels handlers of clients that went away).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from turnpike.gateway import load, openai
from turnpike.gateway.admission import Admission, Outcome, State, Ticket
from turnpike.gateway.config import DeploymentLimits, GatewayConfig
from turnpike.gateway.endpoints import Endpoint, Endpoints, Fleet
from turnpike.gateway.hold import HoldBook
from turnpike.gateway.metrics import GatewayMetrics, Snapshot
from turnpike.gateway.proxy import new_session, relay, upstream_headers
from turnpike.gateway.routing import Load, Picker, QueueReading, new_picker
from turnpike.gateway.scrape import scrape_forever
from turnpike.gateway.tenants import Identity, Refusal, TenantBook

log = logging.getLogger(__name__)

Clock = Callable[[], float]
MAX_UPSTREAM_JSON_BYTES = 64 * 1024 * 1024
# A connect failure sends nothing, so one more replica may be tried safely.
CONNECT_ATTEMPTS = 2
# The session leaves bodies compressed (for passthrough); JSON the gateway reads must not be.
IDENTITY = {"Accept-Encoding": "identity"}


class Rejected(Exception):
    """The gateway answers instead of the upstream; ``reason`` labels the metric."""

    def __init__(
        self, status: int, message: str, *, reason: str, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.retry_after = retry_after


@dataclass(eq=False)
class _Deployment:
    """Per-deployment live state (the shell's half; decisions live in Admission)."""

    name: str
    model: str
    limits: DeploymentLimits
    admission: Admission
    picker: Picker
    waiters: dict[Ticket, asyncio.Event] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What a ``send`` callback needs to meter the upstream call it makes."""

    endpoint: Endpoint
    first_byte: Callable[[], None]
    broken: Callable[[str], None]


Send = Callable[[Attempt], Awaitable[web.StreamResponse]]


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        endpoints: Endpoints,
        *,
        routing: str = "least-outstanding",
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        metrics: GatewayMetrics | None = None,
        scrape_interval_s: float | None = 1.0,
    ) -> None:
        self.config = config
        self.endpoints = endpoints
        self.tenants = TenantBook(config)
        self.holds = HoldBook()
        self.metrics = metrics or GatewayMetrics(config.slo_thresholds_seconds())
        self.metrics.watch(self.snapshot)
        new_picker(routing, rng)  # refuse an unknown name now, not at the first request
        self._routing = routing
        self._rng = rng
        self._clock = clock
        self._deployments: dict[str, _Deployment] = {}
        self._queues: dict[str, QueueReading] = {}
        self._scrape_interval_s = scrape_interval_s
        self._session: aiohttp.ClientSession | None = None
        # Requests within each deployment's SLO threshold, cumulative (load.py).
        self.slo = load.SLOBook()
        endpoints.subscribe(self._fleet_changed)
        for model in endpoints.models():
            self._measure_slo(model)

    # -- lifecycle ---------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.cleanup_ctx.append(self._lifetime)
        get, post = app.router.add_get, app.router.add_post
        for path in ("/v2/health/live", "/v2/health/ready", "/healthz", "/readyz"):
            get(path, self._live)
        get("/metrics", self._metrics)
        get(load.PATH, self._load)
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            get(base, self._v2)
            get(f"{base}/ready", self._v2_ready)
            for verb in ("infer", "generate", "generate_stream"):
                post(f"{base}/{verb}", self._v2)
        post("/v1/completions", self._openai_completions)
        post("/v1/chat/completions", self._openai_chat)
        return app

    async def _lifetime(self, _: web.Application) -> AsyncIterator[None]:
        c = self.config
        session = new_session(
            connections=c.upstream_connections,
            connect_timeout_s=c.upstream_connect_timeout_seconds,
            read_timeout_s=c.upstream_read_timeout_seconds,
        )
        self._session = session
        scraper = None
        if self._scrape_interval_s is not None:
            scraper = asyncio.create_task(
                scrape_forever(
                    session,
                    self._scrape_targets,
                    self._record_queue,
                    interval_s=self._scrape_interval_s,
                    timeout_s=min(1.0, self._scrape_interval_s),
                )
            )
        try:
            yield
        finally:
            if scraper is not None:
                scraper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraper
            await session.close()
            self._session = None

    # -- state -------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        queued: dict[tuple[str, str], int] = {}
        in_flight: dict[tuple[str, str], int] = {}
        for name, dep in self._deployments.items():
            for tier in self.config.tiers:
                queued[(name, tier)] = dep.admission.queued_in(tier)
                in_flight[(name, tier)] = dep.admission.in_flight_in(tier)
        held = {name: self.holds.held(name) for name in self._deployments}
        return Snapshot(held=held, queued=queued, in_flight=in_flight)

    def queue_readings(self) -> Mapping[str, QueueReading]:
        """Triton queue depth per endpoint key, as last scraped."""
        return dict(self._queues)

    def _deployment(self, model: str) -> tuple[_Deployment, Fleet]:
        fleet = self.endpoints.fleet(model)
        if fleet is None:
            raise Rejected(404, f"no deployment serves model {model!r}", reason="unknown_model")
        dep = self._deployments.get(fleet.deployment)
        if dep is None:
            limits = self.config.limits(fleet.deployment)
            dep = _Deployment(
                name=fleet.deployment,
                model=model,
                limits=limits,
                admission=Admission(self.config.tiers, queue_limit=limits.queue_limit),
                picker=new_picker(self._routing, self._rng),
            )
            self._deployments[fleet.deployment] = dep
            self._resize(dep, fleet)
        return dep, fleet

    def _measure_slo(self, model: str) -> None:
        """Report a deployment with an SLO from the moment it is discovered, at zero
        requests: the operator then counts its requests here from the first one,
        never also from Triton's counters (which would count the first ones twice)."""
        fleet = self.endpoints.fleet(model)
        if fleet is not None and fleet.slo_threshold_ms is not None:
            self.slo.track(fleet.deployment, fleet.slo_threshold_ms)

    def _fleet_changed(self, model: str) -> None:
        self._measure_slo(model)
        fleet = self.endpoints.fleet(model)
        dep = self._deployments.get(fleet.deployment) if fleet is not None else None
        if dep is not None and fleet is not None:
            self._resize(dep, fleet)

    def _resize(self, dep: _Deployment, fleet: Fleet) -> None:
        replicas = len(fleet.ready)
        most = fleet.max_replicas if fleet.max_replicas is not None else dep.limits.max_replicas
        if replicas:
            dep.ready.set()
        else:
            dep.ready.clear()
        slots = replicas * dep.limits.max_in_flight_per_replica
        self._wake(dep, dep.admission.resize(slots, most is not None and replicas < most))

    @staticmethod
    def _wake(dep: _Deployment, tickets: list[Ticket] | tuple[Ticket, ...]) -> None:
        for ticket in tickets:
            waiter = dep.waiters.pop(ticket, None)
            if waiter is not None:
                waiter.set()

    def _scrape_targets(self) -> list[tuple[str | None, Endpoint]]:
        targets: list[tuple[str | None, Endpoint]] = []
        for dep in self._deployments.values():
            fleet = self.endpoints.fleet(dep.model)
            if fleet is not None:
                model = dep.limits.triton_model or fleet.upstream or dep.model
                targets += [(model, ep) for ep in fleet.ready if ep.metrics_port is not None]
        # Pods come and go with random names: forget readings of pods no longer ready.
        current = {ep.key for _, ep in targets}
        self._queues = {k: v for k, v in self._queues.items() if k in current}
        return targets

    def _record_queue(self, key: str, reading: QueueReading) -> None:
        # What we had on that pod as the scrape came back: the part of its queue
        # that is ours (see routing.outstanding).
        own = sum(dep.in_flight.get(key, 0) for dep in self._deployments.values())
        self._queues[key] = replace(reading, own=float(own))

    # -- the request path --------------------------------------------------

    async def _hold(self, dep: _Deployment, started: float) -> None:
        limits = dep.limits
        held = self.holds.hold(dep.name, limits.hold_limit)
        if held is None:
            raise Rejected(
                503,
                f"deployment {dep.name} has no ready replica and {limits.hold_limit} "
                "requests already wait for one",
                reason="hold_full",
                retry_after=limits.retry_after_seconds,
            )
        try:
            deadline = started + limits.hold_timeout_seconds
            while not dep.ready.is_set():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(dep.ready.wait(), remaining)
        except TimeoutError:
            raise Rejected(
                503,
                f"deployment {dep.name} had no ready replica within "
                f"{limits.hold_timeout_seconds:g} s",
                reason="hold_timeout",
                retry_after=limits.retry_after_seconds,
            ) from None
        finally:
            self.holds.release(held)

    async def _admit(self, dep: _Deployment, tier: str) -> Ticket:
        """A slot for this request, after the fair queue if need be; raises Rejected."""
        limits = dep.limits
        decision = dep.admission.arrive(tier)
        self._wake(dep, decision.evicted)
        ticket = decision.ticket
        if decision.outcome is Outcome.FULL:
            raise Rejected(
                503,
                f"deployment {dep.name}: the queue is full",
                reason="queue_full",
                retry_after=limits.retry_after_seconds,
            )
        if ticket is None or decision.outcome is Outcome.DISPATCH:
            if ticket is None:
                raise _shed(dep, tier)
            return ticket
        waiter = asyncio.Event()
        dep.waiters[ticket] = waiter
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), limits.queue_timeout_seconds)
        except BaseException:
            # The client went away: give back the slot it may just have been given.
            self._abandon(dep, ticket)
            raise
        if ticket.state is State.IN_FLIGHT:
            return ticket
        self._abandon(dep, ticket)
        if ticket.state is State.SHED:
            raise _shed(dep, tier)
        raise Rejected(
            503,
            f"deployment {dep.name}: no slot within {limits.queue_timeout_seconds:g} s",
            reason="queue_timeout",
            retry_after=limits.retry_after_seconds,
        )

    def _abandon(self, dep: _Deployment, ticket: Ticket) -> None:
        dep.waiters.pop(ticket, None)
        if ticket.state is State.IN_FLIGHT:
            self._finish(dep, ticket)
        else:
            dep.admission.withdraw(ticket)

    def _finish(self, dep: _Deployment, ticket: Ticket) -> None:
        self._wake(dep, dep.admission.finish(ticket))

    async def _call(
        self, model: str, identity: Identity, send: Send, *, admit: bool = True
    ) -> web.StreamResponse:
        """Run ``send`` against a picked ready replica of ``model``'s deployment, metered."""
        started = self._clock()
        dep, fleet = self._deployment(model)
        labels = (dep.name, identity.tier)
        ticket: Ticket | None = None
        try:
            if not fleet.ready:
                await self._hold(dep, started)
            if admit:
                ticket = await self._admit(dep, identity.tier)
        except Rejected as exc:
            self.metrics.rejected.labels(*labels, exc.reason).inc()
            raise
        self.metrics.queue_wait.labels(*labels).observe(self._clock() - started)
        self.metrics.admitted.labels(*labels).inc()

        def first_byte() -> None:
            self.metrics.first_byte.labels(*labels).observe(self._clock() - started)

        def broken(kind: str) -> None:
            self.metrics.upstream_errors.labels(dep.name, kind).inc()

        tried: set[str] = set()
        good: bool | None = None  # the request's outcome for the SLO meter, once known
        try:
            for attempt in range(1, CONNECT_ATTEMPTS + 1):
                fleet_now = self.endpoints.fleet(model)
                ready = fleet_now.ready if fleet_now is not None else ()
                candidates = [e for e in ready if e.key not in tried]
                if not candidates:
                    self.metrics.rejected.labels(*labels, "no_upstream").inc()
                    raise Rejected(
                        503,
                        f"deployment {dep.name} has no ready replica left to try",
                        reason="no_upstream",
                        retry_after=dep.limits.retry_after_seconds,
                    )
                load = Load(in_flight=dep.in_flight, queues=self._queues, now=self._clock())
                endpoint = dep.picker.pick(candidates, load)
                tried.add(endpoint.key)
                dep.in_flight[endpoint.key] = dep.in_flight.get(endpoint.key, 0) + 1
                try:
                    response = await send(Attempt(endpoint, first_byte, broken))
                except aiohttp.ClientConnectorError:
                    broken("connect")
                    if attempt == CONNECT_ATTEMPTS:
                        raise
                    continue
                except TimeoutError:
                    broken("timeout")
                    raise
                finally:
                    left = dep.in_flight[endpoint.key] - 1
                    if left:
                        dep.in_flight[endpoint.key] = left
                    else:
                        del dep.in_flight[endpoint.key]
                code = f"{response.status // 100}xx"
                elapsed = self._clock() - started
                self.metrics.responses.labels(*labels, code).inc()
                self.metrics.total.labels(*labels).observe(elapsed)
                threshold = fleet.slo_threshold_ms
                good = 200 <= response.status < 300 and (
                    threshold is None or elapsed * 1000.0 <= threshold
                )
                return response
            raise AssertionError("unreachable")  # the loop returns or raises
        except Exception:
            good = False  # admitted and failed: a bad request (a client that left is neither)
            raise
        finally:
            if ticket is not None:
                self._finish(dep, ticket)
            if good is not None and fleet.slo_threshold_ms is not None:
                self.slo.record(dep.name, fleet.slo_threshold_ms, good=good)

    def _identify(self, request: web.Request) -> Identity:
        found = self.tenants.identify(request.headers)
        if isinstance(found, Refusal):
            raise Rejected(found.status, found.reason, reason="unauthorized")
        return found

    def _upstream_model(self, model: str) -> str:
        fleet = self.endpoints.fleet(model)
        if fleet is None:
            return self.config.limits(model).triton_model or model
        return self.config.limits(fleet.deployment).triton_model or fleet.upstream or model

    def _limits_for(self, model: str) -> DeploymentLimits:
        fleet = self.endpoints.fleet(model)
        return self.config.limits(fleet.deployment if fleet is not None else model)

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the gateway's application is not running")
        return self._session

    # -- handlers ----------------------------------------------------------

    async def _live(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _load(self, _: web.Request) -> web.Response:
        """What this gateway holds and queues, for the operator (see gateway/load.py)."""
        return web.json_response(load.document(self.snapshot(), self.slo))

    async def _v2_ready(self, request: web.Request) -> web.StreamResponse:
        """Ready means a replica answers now: a probe must not wake a deployment at zero."""
        try:
            self._identify(request)
        except Rejected as exc:
            return _v2_error(exc)
        fleet = self.endpoints.fleet(request.match_info["model"])
        if fleet is None or not fleet.ready:
            return web.Response(status=404 if fleet is None else 503)
        return await self._v2(request)

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        """KServe v2, passed through; only inference (POST) takes a slot."""
        model = request.match_info["model"]
        tail = request.path[len(f"/v2/models/{model}") :]
        try:
            identity = self._identify(request)
            body = await request.read() if request.can_read_body else b""
        except Rejected as exc:
            return _v2_error(exc)
        drop = (self.config.tenant_header,) if self.config.tenant_header else ()
        headers = upstream_headers(request.headers, drop)
        path = f"/v2/models/{self._upstream_model(model)}{tail}"
        if request.query_string:
            path += "?" + request.query_string

        async def send(attempt: Attempt) -> web.StreamResponse:
            async with self._require_session().request(
                request.method, attempt.endpoint.url(path), data=body or None, headers=headers
            ) as upstream:
                return await relay(request, upstream, attempt.first_byte, attempt.broken)

        try:
            return await self._call(model, identity, send, admit=request.method == "POST")
        except Rejected as exc:
            return _v2_error(exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _v2_error(_upstream_failure(model, exc))

    async def _openai_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, openai.completion_request)

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, openai.chat_request)

    async def _openai(
        self,
        request: web.Request,
        parse: Callable[[Any, Any], openai.GenerateCall],
    ) -> web.StreamResponse:
        try:
            identity = self._identify(request)
        except Rejected as exc:
            return _openai_rejection(exc)
        try:
            try:
                body = json.loads(await request.read())
            except ValueError:
                raise openai.OpenAIError("the request body is not JSON") from None
            model = body.get("model") if isinstance(body, dict) else None
            limits = self._limits_for(model if isinstance(model, str) else "")
            call = parse(body, limits.openai)
        except openai.OpenAIError as exc:
            return web.json_response(exc.body(), status=exc.status)
        prefix = "chatcmpl-" if call.kind is openai.Kind.CHAT else "cmpl-"
        response_id = prefix + uuid.uuid4().hex
        created = int(time.time())
        verb = "generate_stream" if call.stream else "generate"
        path = f"/v2/models/{self._upstream_model(call.model)}/{verb}"
        payload = call.payload(limits.openai.dialect)

        async def send(attempt: Attempt) -> web.StreamResponse:
            session = self._require_session()
            async with session.post(
                attempt.endpoint.url(path), json=payload, headers=IDENTITY
            ) as upstream:
                if upstream.status != 200:
                    attempt.first_byte()
                    return await _openai_upstream_error(upstream)
                if call.stream:
                    translator = openai.StreamTranslator(
                        call,
                        response_id=response_id,
                        created=created,
                        cumulative=limits.openai.cumulative_stream,
                    )
                    return await _openai_stream(request, upstream, translator, attempt)
                data = await upstream.content.read(MAX_UPSTREAM_JSON_BYTES + 1)
                attempt.first_byte()
            try:
                answer = openai.response_body(
                    call, json.loads(data), response_id=response_id, created=created
                )
            except ValueError:
                error = openai.OpenAIError("upstream sent a body that is not JSON", status=502)
                return web.json_response(error.body(), status=502)
            except openai.OpenAIError as exc:
                return web.json_response(exc.body(), status=exc.status)
            return web.json_response(answer)

        try:
            return await self._call(call.model, identity, send)
        except Rejected as exc:
            return _openai_rejection(exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _openai_rejection(_upstream_failure(call.model, exc))


def _shed(dep: _Deployment, tier: str) -> Rejected:
    return Rejected(
        429,
        f"deployment {dep.name} is at its maximum; tier {tier} yields",
        reason="shed",
        retry_after=dep.limits.retry_after_seconds,
    )


def _upstream_failure(model: str, exc: BaseException) -> Rejected:
    timeout = isinstance(exc, TimeoutError)
    kind = "timeout" if timeout else type(exc).__name__
    log.warning("upstream of model %s failed: %s", model, kind)
    return Rejected(504 if timeout else 502, f"upstream failed: {kind}", reason="upstream")


def _retry_headers(exc: Rejected) -> Mapping[str, str]:
    return {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}


def _v2_error(exc: Rejected) -> web.Response:
    """KServe v2's error shape."""
    return web.json_response({"error": exc.message}, status=exc.status, headers=_retry_headers(exc))


def _openai_rejection(exc: Rejected) -> web.Response:
    error = openai.OpenAIError(exc.message, status=exc.status, code=exc.reason)
    return web.json_response(error.body(), status=exc.status, headers=_retry_headers(exc))


async def _openai_upstream_error(upstream: aiohttp.ClientResponse) -> web.Response:
    raw = await upstream.content.read(64 * 1024)
    try:
        message = str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        message = raw.decode("utf-8", "replace")[:500] or "upstream error"
    status = upstream.status if 400 <= upstream.status < 500 else 502
    return web.json_response(openai.OpenAIError(message, status=status).body(), status=status)


async def _openai_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    translator: openai.StreamTranslator,
    attempt: Attempt,
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    decoder = openai.SSEDecoder()
    first = True
    try:
        async for chunk in upstream.content.iter_any():
            if first:
                attempt.first_byte()
                first = False
            frames = b"".join(translator.event(data) for data in decoder.feed(chunk))
            if frames:
                await response.write(frames)
        tail = b"".join(translator.event(data) for data in decoder.close())
        await response.write(tail + translator.end())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        attempt.broken(kind)
        # In band: the status line is long gone; OpenAI's clients raise on an error event.
        await response.write(translator.fail(f"upstream stream failed: {kind}"))
    await response.write_eof()
    return response


async def serve(
    gateway: Gateway, host: str, port: int, *, shutdown_timeout_s: float = 10.0
) -> web.AppRunner:
    """Start listening; the caller waits, then ``await runner.cleanup()``."""
    runner = web.AppRunner(
        gateway.app(),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=shutdown_timeout_s,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
