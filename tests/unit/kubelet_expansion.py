"""The kubelet's $(VAR) expansion of command, args and env values, for tests.

A line-by-line port of k8s.io/kubernetes third_party/forked/golang/expansion
(Expand and tryReadVariableName, v1.36), so tests can check what a container
really receives rather than what the pod spec spells.
"""

from __future__ import annotations

from collections.abc import Callable


def expand(text: str, mapping: Callable[[str], str]) -> str:
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            read, is_variable, advance = _read_variable_name(text[cursor + 1 :])
            out.append(mapping(read) if is_variable else read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def _read_variable_name(text: str) -> tuple[str, bool, int]:
    first = text[0]
    if first == "$":  # an escaped operator
        return "$", False, 1
    if first == "(":
        end = text.find(")", 1)
        if end != -1:
            return text[1:end], True, end + 1
        return "$(", False, 1  # an incomplete reference stays as it is
    return "$" + first, False, 1


def expand_all(text: str) -> str:
    """Expansion with every variable defined (as ``<NAME>``): anything the kubelet
    could substitute shows up."""
    return expand(text, lambda name: f"<{name}>")
