"""What the operator makes of the API server's error answers."""

from __future__ import annotations

import json

from turnpike.kube.client import api_error

# Captured from the local cluster: a server-side apply into a namespace being deleted.
TERMINATING = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": 'services "s" is forbidden: unable to create new content in namespace'
    " termtest because it is being terminated",
    "reason": "Forbidden",
    "details": {
        "name": "s",
        "kind": "services",
        "causes": [
            {
                "reason": "NamespaceTerminating",
                "message": "namespace termtest is being terminated",
                "field": "metadata.namespace",
            }
        ],
    },
    "code": 403,
}


def test_a_write_into_a_terminating_namespace_is_recognised() -> None:
    error = api_error(403, "Forbidden", json.dumps(TERMINATING).encode())
    assert error.namespace_terminating
    assert error.reason == "Forbidden"
    assert "being terminated" in error.message


def test_other_forbidden_answers_are_not_mistaken_for_it() -> None:
    body = {**TERMINATING, "message": "RBAC: access denied", "details": {"causes": []}}
    assert not api_error(403, "Forbidden", json.dumps(body).encode()).namespace_terminating


def test_a_body_that_is_not_a_status_still_gives_a_readable_error() -> None:
    error = api_error(502, "Bad Gateway", b"<html>upstream down</html>")
    assert error.status == 502 and error.reason == "Bad Gateway"
    assert error.message == "<html>upstream down</html>"
    assert not error.namespace_terminating and not error.not_found
