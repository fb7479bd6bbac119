"""Cross-field rules, written once, enforced twice.

Each rule carries a CEL expression (rendered into the CRD as
``x-kubernetes-validations`` so the API server refuses bad manifests at
admission) and the same predicate in Python (so the operator and the unit tests
apply identical logic to objects that were stored before a CRD change).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    cel: str
    message: str
    # A field path relative to the object the rule sits on, e.g. ".maxReplicas":
    # the API server prefixes it to the message so users see which field is wrong.
    field_path: str | None = None
    # Transition rules (using oldSelf) only run on update; there is no Python twin.
    check: Callable[[Any], bool] | None = None
    reason: str | None = None

    def to_schema(self) -> dict[str, str]:
        rule: dict[str, str] = {"rule": self.cel, "message": self.message}
        if self.field_path:
            rule["fieldPath"] = self.field_path
        if self.reason:
            rule["reason"] = self.reason
        return rule


def rules_schema(rules: tuple[Rule, ...]) -> dict[str, Any]:
    """The json_schema_extra that puts rules into the generated CRD."""
    return {"x-kubernetes-validations": [r.to_schema() for r in rules]}


def violations(rules: tuple[Rule, ...], obj: Any) -> list[str]:
    """Messages of the rules the object breaks (Python twin of admission)."""
    return [r.message for r in rules if r.check is not None and not r.check(obj)]
