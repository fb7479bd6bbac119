"""The API server is the judge: generated specs and their rendered children, server-side dry run.

The pydantic models re-implement what the CRD's schema and CEL rules accept, and
the renderer promises children the API server stores. Re-implementations drift,
so this sends generated ModelDeployments (valid and invalid, from the hypothesis
strategies of the unit suite) to the local API server with `--dry-run=server`:
every body the models accept must be admitted and every body they refuse must
be refused, and the Deployment, Service and PodDisruptionBudget rendered from
each accepted body must pass the real validation (names, labels, quantities,
resource names, sizes). Nothing is stored.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hack.kubectl import Kubectl
from tests.unit.test_properties import bodies
from turnpike.api.modeldeployment import ModelDeployment
from turnpike.reconcile.children import desired_children
from turnpike.reconcile.validation import parse_model_deployment

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds_installed")]
BATCH = 30
BATCHES = 3
CREATED = re.compile(r"^(\S+)/(\S+) created \(server dry run\)$", re.MULTILINE)
# metadata.name is the API server's to judge, for every kind alike (the operator
# only ever reads stored objects), so the models are not asked about it.
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def as_stored(value: Any) -> Any:
    """``value`` as the API server stores it: it decodes JSON into UTF-8 the way Go
    does, joining surrogate pairs and replacing a lone surrogate with U+FFFD, so the
    operator never reads a lone surrogate. The models judge what they will read."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [as_stored(v) for v in value]
    if isinstance(value, dict):
        return {as_stored(k): as_stored(v) for k, v in value.items()}
    return value


def dry_run(kube: Kubectl, objects: list[dict[str, Any]]) -> tuple[set[tuple[str, str]], str]:
    """(kind, name) of every object the API server would create, and its refusals
    (one line per refused object)."""
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    result = kube.run("create", "--dry-run=server", "-f", "-", stdin=doc, check=False,
                      timeout=120)
    created = {(kind.split(".", 1)[0], name) for kind, name in CREATED.findall(result.stdout)}
    return created, result.stderr


def refusals_of(names: set[str], stderr: str) -> str:
    """The API server's words about these objects, for the failure message."""
    lines = [line for line in stderr.splitlines() if any(f'"{n}"' in line for n in names)]
    return "\n".join(lines)[:4000]


@settings(
    max_examples=BATCHES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)
@given(batch=st.lists(bodies(), min_size=BATCH, max_size=BATCH))
def test_the_api_server_agrees_with_the_models_and_stores_every_rendered_child(
    kube: Kubectl, batch: list[dict[str, Any]]
) -> None:
    unique: dict[str, dict[str, Any]] = {}
    for drawn in batch:
        body = as_stored(
            {**drawn, "metadata": {"name": drawn["metadata"]["name"], "namespace": kube.namespace}}
        )
        name = body["metadata"]["name"]
        if len(name) <= 253 and DNS1123_SUBDOMAIN.fullmatch(name):
            unique.setdefault(name, body)
    accepted: set[str] = set()
    children: list[dict[str, Any]] = []
    for name, body in unique.items():
        parsed = parse_model_deployment({**body, "metadata": {**body["metadata"], "uid": "u"}})
        if isinstance(parsed, ModelDeployment):
            accepted.add(name)
            children += [
                {**c, "metadata": {**c["metadata"], "namespace": kube.namespace}}
                for c in desired_children(parsed, 2, "00000000-0000-0000-0000-000000000000")
            ]
    created, stderr = dry_run(kube, list(unique.values()))
    admitted = {n for kind, n in created if kind == "modeldeployment"}
    assert admitted == accepted, (
        f"admitted, refused by the models: {sorted(admitted - accepted)}; "
        f"refused, accepted by the models: {sorted(accepted - admitted)}\n"
        + refusals_of(accepted - admitted, stderr)
    )
    if not children:
        return
    stored, stderr = dry_run(kube, children)
    wanted = {(c["kind"].lower(), c["metadata"]["name"]) for c in children}
    refused = wanted - stored
    assert not refused, f"refused children: {sorted(refused)}\n" + refusals_of(
        {name for _, name in refused}, stderr
    )
