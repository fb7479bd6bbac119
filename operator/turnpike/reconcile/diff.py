"""Decide whether a child needs a server-side apply.

An apply that changes nothing is still a write request, so a reconcile that
finds nothing to change must not send one. The rendered object is compared
with the live one field by field (only fields Turnpike renders, so defaults the
API server adds never count as drift), and a hash of the rendered object is
kept in an annotation so a field Turnpike stops rendering also triggers an apply.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

SPEC_HASH_ANNOTATION = "turnpike.dev/rendered-hash"


def rendered_hash(obj: dict[str, Any]) -> str:
    body = {k: v for k, v in obj.items() if k != "status"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """The rendered object, annotated with its own hash."""
    digest = rendered_hash(obj)
    metadata = dict(obj["metadata"])
    metadata["annotations"] = {**metadata.get("annotations", {}), SPEC_HASH_ANNOTATION: digest}
    return {**obj, "metadata": metadata}


def contains(live: Any, wanted: Any) -> bool:
    """Every field of wanted has the same value in live (lists compared item by item)."""
    if isinstance(wanted, dict):
        if not isinstance(live, dict):
            return False
        # The API server drops zero values of omitempty fields (empty lists and
        # maps, false, 0, ""): absent means zero. (PriorityClass.globalDefault: false
        # is one: comparing it as missing re-applied every PriorityClass each pass.)
        return all(
            contains(live[key], value) if key in live else _is_zero(value)
            for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        if not isinstance(live, list) or len(live) != len(wanted):
            return False
        return all(contains(a, b) for a, b in zip(live, wanted, strict=True))
    if isinstance(wanted, bool) or isinstance(live, bool):
        return live is wanted
    if isinstance(wanted, int | float) and isinstance(live, int | float):
        return float(live) == float(wanted)
    return bool(live == wanted)


def _is_zero(value: Any) -> bool:
    return value in (None, False, "") or value == [] or value == {}  # False == 0 == 0.0


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """desired carries its hash annotation (see with_hash)."""
    if live is None:
        return True
    annotations = live.get("metadata", {}).get("annotations") or {}
    wanted_hash = desired["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
    if annotations.get(SPEC_HASH_ANNOTATION) != wanted_hash:
        return True
    return not contains(live, {k: v for k, v in desired.items() if k != "status"})


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``.

    Status is written with merge patches, which merge objects key by key: a key
    that left a map (a pool whose grant went to zero, a field that became unset)
    must be sent as null, or the stored status keeps it and every later pass
    sees a difference and writes again. Lists and scalars are replaced whole.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
