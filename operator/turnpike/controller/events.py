"""Kubernetes Events on meaningful transitions, so `kubectl describe md` tells the story."""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from typing import Any

from turnpike.kube import ApiError, KubeAPI

log = logging.getLogger(__name__)
COMPONENT = "turnpike"


def event_for(
    obj: dict[str, Any], type_: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    metadata = obj["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{metadata['name']}.{secrets.token_hex(8)}",
            "namespace": metadata.get("namespace") or "default",
        },
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": metadata["name"],
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post_event(
    kube: KubeAPI, obj: dict[str, Any], type_: str, reason: str, message: str, now: datetime
) -> None:
    """Events are best effort: losing one must never fail a reconcile."""
    metadata = obj["metadata"]
    log.info(
        "event %s %s on %s/%s: %s",
        type_,
        reason,
        metadata.get("namespace"),
        metadata["name"],
        message,
    )
    try:
        await kube.create(event_for(obj, type_, reason, message, now))
    except (ApiError, OSError) as error:
        log.warning("could not post event %s on %s: %s", reason, obj["metadata"]["name"], error)
