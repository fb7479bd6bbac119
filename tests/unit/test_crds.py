"""The generated CRDs: fresh on disk, structural, and documented.

The API server refuses non-structural schemas and CEL rules that reference
fields that do not exist; these tests catch both without a cluster.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from tests import crd_schema
from turnpike.api.base import ApiModel
from turnpike.api.crdgen import (
    CRDS,
    HEADER,
    CrdGenError,
    CrdSpec,
    build_crd,
    generated,
    main,
    modeldeployment_crd,
    stale_files,
    structural_schema,
)
from turnpike.api.modeldeployment import GPU, Autoscaling, Runtime

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
Schema = dict[str, Any]


def _root() -> Schema:
    return crd_schema.root(modeldeployment_crd())


def _at(path: str) -> Schema:
    return crd_schema.at(modeldeployment_crd(), path)


_nodes = crd_schema.nodes


def test_crds_on_disk_are_fresh() -> None:
    stale = stale_files(CRD_DIR)
    assert not stale, f"stale CRDs under crds/: {stale}; run `make crds`"


def test_every_kind_is_generated() -> None:
    assert set(generated()) == {
        "turnpike.dev_modeldeployments.yaml",
        "turnpike.dev_capacitytiers.yaml",
    }
    assert all(text.startswith(HEADER) for text in generated().values())


def test_schema_is_structural() -> None:
    for path, node in _nodes(_root()):
        assert isinstance(node.get("type"), str), f"{path} has no type"
        assert node["type"] != "null", path
        forbidden = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const"}
        assert not forbidden & set(node), f"{path}: {forbidden & set(node)}"
        if "properties" in node or "additionalProperties" in node:
            assert node["type"] == "object", path
            assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("default", "") is not None, f"{path} has a null default"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}.{bound} must be boolean"


def test_types_and_bounds_carry_over() -> None:
    assert _at("spec.gpu.count")["type"] == "integer"
    target = _at("spec.autoscaling.target")
    assert target["type"] == "number"
    assert (target["minimum"], target["exclusiveMinimum"]) == (0, True)
    tolerance = _at("spec.autoscaling.tolerance")
    assert (tolerance["maximum"], tolerance["exclusiveMaximum"]) == (1, True)
    assert _at("spec.model.backend")["enum"] == [
        "tensorrtllm",
        "python",
        "onnxruntime",
        "vllm",
        "pytorch",
    ]
    assert _at("spec.model.backend")["type"] == "string"
    assert _at("spec.model.uri")["pattern"].startswith("^(s3|gs|pvc|hf|https?)://")
    requests = _at("spec.runtime.resources.requests")
    assert requests["maxProperties"] == 8
    assert "pattern" in requests["additionalProperties"]
    assert _at("spec.runtime.args")["items"]["maxLength"] == 1024


@pytest.mark.parametrize(
    ("block", "model"),
    [("gpu", GPU), ("runtime", Runtime), ("autoscaling", Autoscaling), ("runtime.resources", None)],
)
def test_blocks_default_to_their_model_defaults(block: str, model: type[BaseModel] | None) -> None:
    # The API server checks a default against the block's CEL rules without
    # applying nested defaults, so blocks default to their full value, not {}.
    default = _at(f"spec.{block}")["default"]
    if model is None:
        assert default == {}
    else:
        assert default and model.model_validate(default) == model()


def test_defaults() -> None:
    assert _at("spec.autoscaling")["default"]["source"] == "pods"
    assert _at("spec.gpu.tensorParallelism")["default"] == 1
    assert _at("spec.runtime.shmSize")["default"] == "2Gi"
    assert _at("spec.model.backend")["default"] == "tensorrtllm"
    # The scale subresource (kubectl scale) needs spec.replicas to exist on every object.
    assert _at("spec.replicas")["default"] == 1
    assert "default" not in _at("spec.runtime.args")  # [] means the same as absent


def test_root_and_required() -> None:
    root = _root()
    assert root["required"] == ["spec"]
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert root["properties"]["metadata"] == {"type": "object"}
    assert _at("spec")["required"] == ["model"]
    assert _at("spec.model")["required"] == ["uri"]


def test_descriptions_teach_the_api() -> None:
    for path in (
        "spec",
        "spec.model",
        "spec.model.uri",
        "spec.model.backend",
        "spec.gpu",
        "spec.gpu.product",
        "spec.gpu.count",
        "spec.runtime",
        "spec.runtime.shmSize",
        "spec.autoscaling",
        "spec.autoscaling.target",
        "spec.replicas",
        "status",
        "status.replicas",
    ):
        assert _at(path).get("description"), f"{path} has no description"
    # A field's own description wins over its class docstring.
    assert "Cannot change in place" in _at("spec.model.backend")["description"]
    assert _root()["description"].startswith("ModelDeployment")


def test_collections_touched_by_cel_are_bounded() -> None:
    # Unbounded lists and maps make the API server reject CEL rules for cost.
    for path, node in _nodes(_at("spec")):
        if node["type"] == "array":
            assert "maxItems" in node, path
        if "additionalProperties" in node:
            assert "maxProperties" in node, path


def _cel_paths(expression: str) -> set[tuple[str, ...]]:
    """Field paths read from self/oldSelf, without a trailing method (``.matches(``)."""
    paths = set()
    for match in re.finditer(r"\b(?:self|oldSelf)((?:\.\w+)+)(\(?)", expression):
        chain = tuple(match.group(1).split(".")[1:])
        paths.add(chain[:-1] if match.group(2) else chain)
    return {p for p in paths if p}


def test_cel_rules_reference_existing_fields() -> None:
    checked = 0
    for path, node in _nodes(_root()):
        for rule in node.get("x-kubernetes-validations", ()):
            paths = _cel_paths(rule["rule"])
            if "fieldPath" in rule:
                paths.add(tuple(rule["fieldPath"].split(".")[1:]))
            for fields in paths:
                target = node
                for name in fields:
                    assert name in target.get("properties", {}), f"{path}: {rule} ({name})"
                    target = target["properties"][name]
                checked += 1
    assert checked >= 10


def test_status_is_structural_and_conditions_are_a_map() -> None:
    status = _at("status")
    assert "x-kubernetes-preserve-unknown-fields" not in status
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_names_subresources_and_columns() -> None:
    crd = modeldeployment_crd()
    assert crd["metadata"]["name"] == "modeldeployments.turnpike.dev"
    spec = crd["spec"]
    assert spec["group"] == "turnpike.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "ModelDeployment",
        "listKind": "ModelDeploymentList",
        "plural": "modeldeployments",
        "singular": "modeldeployment",
        "shortNames": ["md"],
        "categories": ["turnpike"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == [
        "Ready",
        "Replicas",
        "Available",
        "Desired",
        "Queue",
        "Tier",
        "SLO",
        "Backend",
        "GPU",
        "Age",
    ]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Queue"]["type"] == "number"
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }
    assert columns["Backend"]["priority"] == columns["GPU"]["priority"] == 1
    assert columns["GPU"]["jsonPath"] == ".spec.gpu.product"


def test_main_writes_then_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", str(tmp_path)]) == 1
    assert "turnpike.dev_modeldeployments.yaml" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0

    target = tmp_path / "turnpike.dev_modeldeployments.yaml"
    target.write_text(target.read_text() + "# hand edit\n")
    orphan = tmp_path / "turnpike.dev_oldkinds.yaml"
    orphan.write_text(HEADER)
    assert main(["--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "turnpike.dev_modeldeployments.yaml" in err
    assert "turnpike.dev_oldkinds.yaml" in err
    assert "make crds" in err

    assert main([str(tmp_path)]) == 0
    assert not orphan.exists()
    assert main(["--check", str(tmp_path)]) == 0


# The converter is generic: a cluster-scoped kind without status (the shape of
# a future CapacityTier) goes through the same path.
class _Pool(ApiModel):
    """A pool."""

    gpus: int = Field(default=8, ge=1, description="GPUs in the pool.")
    labels: dict[str, str] = Field(default_factory=dict, max_length=4)


class _ClusterSpec(ApiModel):
    """Cluster-wide thing."""

    pools: list[_Pool] = Field(default_factory=list, max_length=2)
    mode: str = Field(default="x", json_schema_extra={"enum": ["x", "y"]})


def test_cluster_scoped_kind_without_status() -> None:
    crd = build_crd(
        CrdSpec(
            kind="Thing",
            plural="things",
            short_names=(),
            scope="Cluster",
            spec_model=_ClusterSpec,
            status_model=None,
        )
    )
    assert crd["spec"]["scope"] == "Cluster"
    (version,) = crd["spec"]["versions"]
    assert "subresources" not in version
    root = version["schema"]["openAPIV3Schema"]
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec"}
    pool = root["properties"]["spec"]["properties"]["pools"]["items"]
    assert pool["description"] == "A pool."
    assert pool["properties"]["labels"]["additionalProperties"] == {"type": "string"}


def test_scale_needs_replica_fields() -> None:
    with pytest.raises(CrdGenError, match="scale"):
        build_crd(
            CrdSpec(
                kind="Thing",
                plural="things",
                short_names=(),
                scope="Cluster",
                spec_model=_ClusterSpec,
                status_model=None,
                scale=True,
            )
        )


class _Union(BaseModel):
    value: int | str


class _Node(BaseModel):
    child: _Node | None = None


def test_non_structural_models_are_refused() -> None:
    with pytest.raises(CrdGenError, match="Optional"):
        structural_schema(_Union)
    with pytest.raises(CrdGenError, match="recursive"):
        structural_schema(_Node)


def test_crds_registry_names_unique_files() -> None:
    names = [crd.filename for crd in CRDS]
    assert len(names) == len(set(names))
