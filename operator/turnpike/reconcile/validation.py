"""Turn a stored object into a typed spec, or into a problem a user can act on.

Admission (schema + CEL) refuses bad manifests, but objects stored before a
CRD change, or written with validation off, still reach the operator. They get
Degraded=True with the field named, never an exception in the reconcile loop.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from turnpike.api.modeldeployment import ModelDeployment
from turnpike.status.conditions import Problem


def parse_model_deployment(body: dict[str, Any]) -> ModelDeployment | Problem:
    try:
        return ModelDeployment.from_k8s(body)
    except ValidationError as error:
        messages = []
        for issue in error.errors()[:5]:
            where = ".".join(str(p) for p in issue["loc"])
            messages.append(f"{where}: {issue['msg']}")
        return Problem("InvalidSpec", "; ".join(messages))


def referenced_secrets(md: ModelDeployment) -> list[str]:
    """Secrets the pods cannot start without, in a stable order."""
    names = {v.secret_key_ref.name for v in md.spec.runtime.env if v.secret_key_ref}
    if md.spec.model.credentials is not None:
        names.add(md.spec.model.credentials.name)
    return sorted(names)


def missing_secrets_problem(missing: list[str]) -> Problem | None:
    if not missing:
        return None
    return Problem(
        "SecretNotFound",
        f"Secret {', '.join(missing)} not found in the namespace; "
        "create it and the rollout continues",
    )
