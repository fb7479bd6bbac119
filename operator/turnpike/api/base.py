"""Common pydantic configuration for every API object.

Kubernetes spells fields in camelCase; Python code reads snake_case.

Unknown fields are ignored here on purpose. Typos never reach the operator: the
API server prunes fields the CRD does not declare and kubectl's strict field
validation reports them. What does reach it is a field from a newer CRD applied
before the operator is upgraded (the documented upgrade order); refusing those
would stop every object that uses them until the new operator runs.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, no nulls."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
