"""A small async REST client over kubernetes_asyncio's authenticated transport.

kubernetes_asyncio loads kubeconfig / in-cluster credentials (tokens, client
certificates, exec plugins) and keeps them fresh; the typed API classes are
not used because the operator handles plain dicts end to end: the renderer
produces them, server-side apply accepts them, status patches are dicts.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from turnpike.api.constants import FIELD_MANAGER
from turnpike.kube.resources import Resource, resource_for

WriteHook = Callable[[str, str], None]
MAX_THROTTLE_RETRIES = 10


class ApiError(Exception):
    """A non-2xx answer from the API server, with its Status reason and message."""

    def __init__(
        self, status: int, reason: str, message: str, causes: tuple[str, ...] = ()
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes
        self.retry_after: float | None = None

    @property
    def namespace_terminating(self) -> bool:
        """Writes into a namespace being deleted fail until it is gone; nothing to retry."""
        return "NamespaceTerminating" in self.causes

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def api_error(status: int, phrase: str, raw: bytes) -> ApiError:
    """The error an answer's body describes: a metav1.Status, or whatever a proxy sent."""
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return ApiError(status, phrase, raw.decode(errors="replace"))
    details = data.get("details") or {}
    # A StatusCause's type travels as "reason" in JSON.
    causes = tuple(str(c.get("reason", "")) for c in details.get("causes") or [])
    message = str(data.get("message", raw.decode(errors="replace")))
    return ApiError(status, str(data.get("reason") or phrase), message, causes)


@dataclass(frozen=True)
class Credentials:
    """What kopf needs to open its own watch connections to the same server."""

    server: str
    ca_path: str | None
    token: str | None
    certificate_path: str | None
    private_key_path: str | None
    insecure: bool


class Kube:
    def __init__(self, api: k8s_client.ApiClient, on_write: WriteHook | None = None) -> None:
        self._api = api
        self._on_write = on_write

    @property
    def credentials(self) -> Credentials:
        cfg = self._api.configuration
        auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        token = auth.split(" ", 1)[1] if auth and " " in auth else auth
        return Credentials(
            server=cfg.host or "",
            ca_path=cfg.ssl_ca_cert,
            token=token,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
            insecure=not cfg.verify_ssl,
        )

    async def close(self) -> None:
        await self._api.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        """One API call; a 429 (priority and fairness, or storage still initialising
        right after a CRD was created) is retried after the server's Retry-After."""
        for attempt in range(MAX_THROTTLE_RETRIES + 1):
            try:
                return await self._request_once(method, path, query, body, content_type, timeout)
            except ApiError as error:
                if error.status != 429 or attempt == MAX_THROTTLE_RETRIES:
                    raise
                await asyncio.sleep(min(error.retry_after or 1.0, 5.0))
        raise AssertionError("unreachable")

    async def _request_once(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None,
        body: Any,
        content_type: str,
        timeout: float,
    ) -> Any:
        response = await self._api.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        try:
            raw = await response.read()
        finally:
            response.release()
        if not 200 <= response.status <= 299:
            error = api_error(response.status, str(response.reason), raw)
            retry_after = response.headers.get("Retry-After", "")
            error.retry_after = float(retry_after) if retry_after.isdigit() else None
            raise error
        data = json.loads(raw) if raw else None
        if method != "GET" and self._on_write is not None:
            self._on_write(method, path)
        return data

    async def get(
        self, resource: Resource, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self.request("GET", resource.path(namespace, name))
        except ApiError as error:
            if error.not_found:
                return None
            raise
        return obj

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        query = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        data = await self.request("GET", resource.path(namespace), query=query)
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    async def list_with_version(
        self, resource: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """The items and the list's resourceVersion, where a watch can resume from."""
        query = {"labelSelector": label_selector} if label_selector else {}
        data = await self.request("GET", resource.path(namespace), query=query)
        items: builtins.list[dict[str, Any]] = data.get("items", [])
        return items, str(data.get("metadata", {}).get("resourceVersion", ""))

    async def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
        resource_version: str | None = None,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) from a watch that ends after timeout_seconds.

        The operator watches its own kinds through kopf and pods through
        :class:`turnpike.controller.podwatch.PodReflector` (which resumes from
        ``resource_version`` and receives BOOKMARK events); tools (benchmarks, the
        demo) use it to see objects appear without polling.
        """
        query = {"watch": "true", "timeoutSeconds": str(timeout_seconds)}
        if label_selector:
            query["labelSelector"] = label_selector
        if resource_version:
            query["resourceVersion"] = resource_version
            query["allowWatchBookmarks"] = "true"
        response = await self._api.call_api(
            resource.path(namespace),
            "GET",
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout_seconds + 30,
        )
        try:
            if response.status != 200:
                raw = await response.read()
                raise ApiError(response.status, str(response.reason), raw.decode(errors="replace"))
            while True:
                line = await response.content.readline()
                if not line:
                    return
                if line.strip():
                    event = json.loads(line)
                    yield event["type"], event["object"]
        finally:
            response.release()

    async def apply(
        self, obj: dict[str, Any], *, force: bool = True, field_manager: str = FIELD_MANAGER
    ) -> dict[str, Any]:
        """Server-side apply: the operator owns exactly the fields it renders."""
        resource = resource_for(obj)
        metadata = obj["metadata"]
        query = {"fieldManager": field_manager}
        if force:
            query["force"] = "true"
        result: dict[str, Any] = await self.request(
            "PATCH",
            resource.path(metadata.get("namespace"), metadata["name"]),
            query=query,
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        return result

    async def patch(
        self, resource: Resource, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch (metadata.resourceVersion in it makes it conditional)."""
        result: dict[str, Any] = await self.request(
            "PATCH",
            resource.path(namespace, name),
            query={"fieldManager": FIELD_MANAGER},
            body=patch,
            content_type="application/merge-patch+json",
        )
        return result

    async def patch_status(
        self, resource: Resource, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        # Without fieldManager the API server records the client's user agent
        # (OpenAPI-Generator/...) as the manager of status in managedFields.
        result: dict[str, Any] = await self.request(
            "PATCH",
            resource.path(namespace, name, "status"),
            query={"fieldManager": FIELD_MANAGER},
            body={"status": status},
            content_type="application/merge-patch+json",
        )
        return result

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        resource = resource_for(obj)
        result: dict[str, Any] = await self.request(
            "POST",
            resource.path(obj["metadata"].get("namespace")),
            query={"fieldManager": FIELD_MANAGER},
            body=obj,
        )
        return result

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        resource = resource_for(obj)
        metadata = obj["metadata"]
        result: dict[str, Any] = await self.request(
            "PUT",
            resource.path(metadata.get("namespace"), metadata["name"]),
            query={"fieldManager": FIELD_MANAGER},
            body=obj,
        )
        return result

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> None:
        try:
            await self.request(
                "DELETE", resource.path(namespace, name), body={"propagationPolicy": "Background"}
            )
        except ApiError as error:
            if not error.not_found:
                raise


async def connect(kubeconfig: str | None = None, on_write: WriteHook | None = None) -> Kube:
    """Credentials from --kubeconfig, $KUBECONFIG, or the pod's service account."""
    configuration = k8s_client.Configuration()
    if (
        kubeconfig is None
        and "KUBECONFIG" not in os.environ
        and os.environ.get("KUBERNETES_SERVICE_HOST")
    ):
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    else:
        await k8s_config.load_kube_config(
            config_file=kubeconfig, client_configuration=configuration
        )
    configuration.proxy = None
    return Kube(k8s_client.ApiClient(configuration), on_write=on_write)
