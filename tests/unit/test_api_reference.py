"""docs/api-reference.md is generated from the models; a stale copy misleads users."""

from pathlib import Path

from turnpike.api.docgen import reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "api-reference.md"


def test_api_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == reference(), (
        "docs/api-reference.md is stale: run make crds"
    )


def test_api_reference_documents_every_spec_field_users_reach_for() -> None:
    text = reference()
    for field in (
        "spec.model.uri",
        "spec.gpu.tensorParallelism",
        "spec.autoscaling.target",
        "spec.runtime.shmSize",
        "spec.tier",
        "status.conditions[].type",
    ):
        assert f"`{field}`" in text, field


def test_admission_manifests_are_current() -> None:
    from turnpike.manifests import render_chart_template, render_manifest

    root = DOC.parents[1]
    for path, text in (
        ("deploy/admission/capacity-tiers.yaml", render_manifest()),
        ("charts/turnpike/templates/capacity-admission.yaml", render_chart_template()),
    ):
        assert (root / path).read_text(encoding="utf-8") == text, f"{path} is stale: run make crds"
