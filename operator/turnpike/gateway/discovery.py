"""Which ModelDeployment serves a model, and its ready pods: the gateway's routing table.

Pure bookkeeping over what the API server lists and watches (the shell is
:mod:`turnpike.gateway.watched`), so every naming and readiness rule is tested
without a cluster.

Names a client can ask for:

- ``NAMESPACE/NAME``, NAME being the ModelDeployment's, always names exactly
  one deployment, even when several serve the same model (the OpenAI ``model``
  field is a free string; in a KServe v2 path the slash is sent as ``%2F``);
- plain ``MODEL`` is the deployment serving it that was created first (by
  creationTimestamp, then namespace/name), so a newer deployment of the same
  model in another namespace never silently takes over a name clients use.

``MODEL`` is ``spec.model.name`` (the model Triton loads), else the
ModelDeployment's own name; that Triton name travels with the fleet so the
gateway asks the replica for the model it actually serves.

A ModelDeployment body the gateway cannot read is skipped, never fatal: the
operator reports the problem on the object; the gateway just has no route.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from turnpike.api.constants import LWS_WORKER_INDEX_LABEL as WORKER_INDEX_LABEL
from turnpike.gateway.endpoints import Endpoint, Fleet
from turnpike.render.labels import LABEL_MODEL_DEPLOYMENT
from turnpike.render.names import label_value

log = logging.getLogger(__name__)

HTTP_PORT = 8000
METRICS_PORT = 8002
HTTP_PORT_NAME = "http"
METRICS_PORT_NAME = "metrics"


@dataclass(frozen=True, slots=True)
class Served:
    """One ModelDeployment as the gateway needs it."""

    namespace: str
    name: str
    model: str  # what clients ask for, and the name inside Triton
    label: str  # value of the model-deployment label on its pods
    created: str  # RFC 3339; sorts in time order
    max_replicas: int | None
    # spec.slo's threshold when its latency is the whole request, which the
    # gateway can time exactly (queue wait is Triton's own, invisible here).
    slo_threshold_ms: float | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def qualified(self) -> str:
        return self.key


def served_from(obj: Mapping[str, Any]) -> Served | None:
    """The routing facts of a ModelDeployment body; None when it has none usable."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not isinstance(spec, dict):
        return None
    if meta.get("deletionTimestamp"):
        return None
    model_spec = _mapping(spec.get("model"))
    model = model_spec.get("name") if isinstance(model_spec.get("name"), str) else None
    return Served(
        namespace=namespace,
        name=name,
        model=model or name,
        label=label_value(name),
        created=str(meta.get("creationTimestamp") or ""),
        max_replicas=_max_replicas(spec),
        slo_threshold_ms=_slo_threshold(spec),
    )


def _slo_threshold(spec: Mapping[str, Any]) -> float | None:
    slo = _mapping(spec.get("slo"))
    threshold = slo.get("thresholdMilliseconds")
    if slo.get("latency", "requestLatency") != "requestLatency":
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold <= 0:
        return None
    return float(threshold)


def _max_replicas(spec: Mapping[str, Any]) -> int | None:
    """How far the fleet can grow: the autoscaler's ceiling, else the fixed count."""
    autoscaling = _mapping(spec.get("autoscaling"))
    value = spec.get("maxReplicas") if autoscaling.get("enabled") else spec.get("replicas", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def endpoint_from(pod: Mapping[str, Any]) -> tuple[str, str, Endpoint] | None:
    """(namespace, deployment label, endpoint) of a ready pod; None when not ready.

    Ready means what the kubelet says (condition Ready) on a running pod with an
    address that is not being deleted: a terminating pod is still Ready until its
    containers stop, but new requests must already go elsewhere.
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    labels = meta.get("labels") or {}
    label = labels.get(LABEL_MODEL_DEPLOYMENT)
    namespace, name, ip = meta.get("namespace"), meta.get("name"), status.get("podIP")
    if not (isinstance(label, str) and isinstance(namespace, str) and isinstance(name, str)):
        return None
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not ip:
        return None
    if str(labels.get(WORKER_INDEX_LABEL, "0")) != "0":
        return None  # a multi-node group's worker: only its leader serves
    conditions = status.get("conditions") or []
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return None
    http, metrics = HTTP_PORT, METRICS_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == HTTP_PORT_NAME:
                http = int(port.get("containerPort", http))
            elif port.get("name") == METRICS_PORT_NAME:
                metrics = int(port.get("containerPort", metrics))
    return namespace, label, Endpoint(str(ip), http, metrics, name)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _key(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if isinstance(namespace, str) and isinstance(name, str):
        return namespace, name
    return None


def _in_scope(key: tuple[str, str], scope: str | None) -> bool:
    return scope is None or key[0] == scope


class Discovery:
    """ModelDeployments and ready pods, and the names each fleet answers to.

    Every change returns the names whose fleet may have changed, so the shell
    tells the gateway (which wakes held requests when a first replica appears).
    """

    def __init__(self) -> None:
        self._served: dict[tuple[str, str], Served] = {}
        self._pods: dict[tuple[str, str], tuple[str, str, Endpoint]] = {}
        self._routes: dict[str, Served] | None = None

    # -- ModelDeployments ------------------------------------------------------

    def replace_deployments(
        self, items: Iterable[Mapping[str, Any]], scope: str | None = None
    ) -> set[str]:
        """What a LIST of ``scope`` (a namespace, None: all) returned replaces what was known."""
        before = self._names()
        self._served = {k: v for k, v in self._served.items() if not _in_scope(k, scope)}
        for obj in items:
            self._put_deployment(obj)
        return before | self._names()

    def deployment_seen(self, event: str, obj: Mapping[str, Any]) -> set[str]:
        key = _key(obj)
        if key is None:
            return set()
        old = self._served.pop(key, None)
        changed = self._names_of(old)
        self._routes = None
        if event != "DELETED":
            self._put_deployment(obj)
        return changed | self._names_of(self._served.get(key))

    def _put_deployment(self, obj: Mapping[str, Any]) -> None:
        key = _key(obj)
        served = served_from(obj)
        if key is None or served is None:
            return
        self._served[key] = served
        self._routes = None

    # -- pods --------------------------------------------------------------------

    def replace_pods(
        self, items: Iterable[Mapping[str, Any]], scope: str | None = None
    ) -> set[str]:
        before = {self._pods[k][:2] for k in self._pods if _in_scope(k, scope)}
        self._pods = {k: v for k, v in self._pods.items() if not _in_scope(k, scope)}
        for pod in items:
            key, found = _key(pod), endpoint_from(pod)
            if key is not None and found is not None:
                self._pods[key] = found
        after = {self._pods[k][:2] for k in self._pods if _in_scope(k, scope)}
        return self._names_of_labels(before | after)

    def pod_seen(self, event: str, obj: Mapping[str, Any]) -> set[str]:
        key = _key(obj)
        if key is None:
            return set()
        old = self._pods.pop(key, None)
        found = endpoint_from(obj) if event != "DELETED" else None
        if found is not None:
            self._pods[key] = found
        if old == found:
            return set()
        return self._names_of_labels({x[:2] for x in (old, found) if x is not None})

    # -- queries -------------------------------------------------------------------

    def fleet(self, name: str) -> Fleet | None:
        served = self._route(name)
        if served is None:
            return None
        ready = sorted(
            (
                ep
                for ns, label, ep in self._pods.values()
                if ns == served.namespace and label == served.label
            ),
            key=lambda ep: ep.name,
        )
        return Fleet(
            served.key,
            tuple(ready),
            served.max_replicas,
            upstream=served.model,
            slo_threshold_ms=served.slo_threshold_ms,
        )

    def models(self) -> tuple[str, ...]:
        return tuple(sorted(self._table()))

    def _route(self, name: str) -> Served | None:
        return self._table().get(name)

    def _table(self) -> dict[str, Served]:
        if self._routes is None:
            table: dict[str, Served] = {}
            for served in sorted(self._served.values(), key=lambda s: (s.created, s.key)):
                table.setdefault(served.model, served)  # the oldest keeps the plain name
                table[served.qualified()] = served
            self._routes = table
        return self._routes

    def _names(self) -> set[str]:
        return set(self._table())

    def _names_of(self, served: Served | None) -> set[str]:
        return set() if served is None else {served.model, served.qualified()}

    def _names_of_labels(self, pods: set[tuple[str, str]]) -> set[str]:
        names: set[str] = set()
        for served in self._served.values():
            if (served.namespace, served.label) in pods:
                names |= self._names_of(served)
        return names
