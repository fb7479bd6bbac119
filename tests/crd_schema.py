"""Walking a generated CRD's OpenAPI schema, for the CRD tests of every kind."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Schema = dict[str, Any]


def root(crd: Schema) -> Schema:
    schema: Schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def at(crd: Schema, path: str) -> Schema:
    """The schema of a dotted field path, e.g. "spec.gpu.count"."""
    node = root(crd)
    for name in path.split("."):
        node = node["properties"][name]
    return node


def nodes(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node below node, with its path."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")
