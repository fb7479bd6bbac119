"""The Helm chart, Dockerfile and deploy/ examples: lint, render, validate offline.

kubeconform cannot download schemas here, so it gets local ones: the built-in
kinds' from the local API server's OpenAPI v3 (tests marked ``cluster``), ours
from crds/. Only kinds no local source describes (the Prometheus Operator's
ServiceMonitor) are skipped, by name, and the test asserts that everything else
was validated.

Helpers used by test_rbac.py live here too (tool paths, rendering, the RBAC table).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack import localcluster
from hack.kubectl import Kubectl
from turnpike.controller import settings as operator_settings
from turnpike.kube.resources import KNOWN

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "turnpike"
DOCS = REPO / "docs" / "install.md"
RELEASE = "turnpike"
NAMESPACE = "turnpike-system"
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")


def _kube_version() -> str:
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("KUBE_VERSION="):
            return line.split("=", 1)[1].strip().lstrip("v")
    raise AssertionError("KUBE_VERSION missing from hack/versions.env")


KUBE_VERSION = _kube_version()


# ---------------------------------------------------------------- helpers


@functools.cache
def tool(name: str) -> str:
    """helm, kubeconform, kubectl: the pinned builds of the local cluster's cache."""
    override = os.environ.get(f"TURNPIKE_{name.upper()}")
    if override:
        return override
    try:
        return str(localcluster.build() / "bin" / name)
    except (OSError, subprocess.CalledProcessError):
        found = shutil.which(name)
        if found is None:
            raise
        return found


def run(
    argv: list[str], stdin: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def helm_template_text(
    *args: str, release: str = RELEASE, namespace: str = NAMESPACE, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(
        [
            tool("helm"),
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            *args,
        ],
        check=check,
    )


def render(*args: str, release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    out = helm_template_text(*args, release=release, namespace=namespace).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def only(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


# A permission: (API group, resource, resource name or "", verb).
Permission = tuple[str, str, str, str]
CLUSTER = "cluster"
RELEASE_NAMESPACE = "release namespace"


def documented_rbac(lease_name: str) -> dict[str, set[Permission]]:
    """The RBAC table of docs/install.md, as permissions by scope."""
    text = DOCS.read_text()
    section = text.split("\n## RBAC", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "no RBAC table in docs/install.md"
    out: dict[str, set[Permission]] = {CLUSTER: set(), RELEASE_NAMESPACE: set()}
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 5, f"RBAC row needs 5 cells: {row}"
        group_cell, resource_cell, verbs_cell, scope, why = cells
        group = group_cell.strip("`").replace('""', "")
        resource = re.findall(r"`([^`]+)`", resource_cell)[0]
        name = lease_name if "only the leader Lease" in resource_cell else ""
        assert scope in out, f"unknown scope {scope!r} in {row}"
        assert why, f"RBAC row without a reason: {row}"
        for verb in (v.strip() for v in verbs_cell.split(",")):
            out[scope].add((group, resource, name, verb))
    return out


def rule_permissions(rules: list[dict[str, Any]]) -> set[Permission]:
    return {
        (group, resource, name, verb)
        for rule in rules
        for group in rule.get("apiGroups", [""])
        for resource in rule["resources"]
        for name in (rule.get("resourceNames") or [""])
        for verb in rule["verbs"]
    }


# ---------------------------------------------------------------- lint and render


def test_helm_lint() -> None:
    run([tool("helm"), "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION])
    run(
        [
            tool("helm"),
            "lint",
            "--strict",
            str(CHART),
            "--kube-version",
            KUBE_VERSION,
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "operator.watchNamespaces={ml,research}",
            "--set",
            "replicaCount=1",
        ]
    )


def test_chart_versions_follow_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == "0.1.0"
    assert chart["appVersion"] == project["version"]
    deployment = only(render(), "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(f":{chart['appVersion']}")


def test_chart_crds_are_copies_of_crds() -> None:
    source = {p.name: p.read_bytes() for p in sorted((REPO / "crds").glob("*.yaml"))}
    chart = {p.name: p.read_bytes() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert source, "no CRDs in crds/"
    assert set(chart) == set(source), "run hack/sync-chart-crds.sh"
    stale = [name for name in source if chart[name] != source[name]]
    assert not stale, f"charts/turnpike/crds/ is stale ({stale}): run hack/sync-chart-crds.sh"
    check = run([str(REPO / "hack" / "sync-chart-crds.sh"), "--check"], check=False)
    assert check.returncode == 0, check.stderr


def test_sync_script_detects_and_repairs_drift(tmp_path: Path) -> None:
    """The script on a scratch copy of the repository layout (the real chart stays as is)."""
    (tmp_path / "hack").mkdir()
    shutil.copy2(REPO / "hack" / "sync-chart-crds.sh", tmp_path / "hack")
    shutil.copytree(REPO / "crds", tmp_path / "crds")
    shutil.copytree(CHART / "crds", tmp_path / "charts" / "turnpike" / "crds")
    script = str(tmp_path / "hack" / "sync-chart-crds.sh")
    chart_crds = tmp_path / "charts" / "turnpike" / "crds"
    first = sorted(chart_crds.glob("*.yaml"))[0]
    first.write_text(first.read_text() + "# drift\n")
    (chart_crds / "old.yaml").write_text("{}\n")
    check = run([script, "--check"], check=False)
    assert check.returncode == 1
    assert first.name in check.stderr and "old.yaml" in check.stderr
    run([script])
    assert run([script, "--check"], check=False).returncode == 0
    assert not (chart_crds / "old.yaml").exists()
    assert first.read_bytes() == (tmp_path / "crds" / first.name).read_bytes()


def test_default_render_has_the_expected_objects() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in render())
    assert kinds == sorted(
        [
            ("ServiceAccount", "turnpike"),
            ("ClusterRole", "turnpike"),
            ("ClusterRole", "turnpike-edit"),
            ("ClusterRole", "turnpike-view"),
            ("ClusterRoleBinding", "turnpike"),
            ("Role", "turnpike-leader-election"),
            ("RoleBinding", "turnpike-leader-election"),
            ("Service", "turnpike-metrics"),
            ("Deployment", "turnpike"),
            ("PodDisruptionBudget", "turnpike"),
            ("ValidatingAdmissionPolicy", "capacity-tier-namespaces.turnpike.dev"),
            ("ValidatingAdmissionPolicyBinding", "capacity-tier-namespaces.turnpike.dev"),
            ("ValidatingAdmissionPolicy", "turnpike-capacity-tier-in-use"),
            ("ValidatingAdmissionPolicyBinding", "turnpike-capacity-tier-in-use"),
        ]
    )
    for doc in render():
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding") and not doc["kind"].startswith(
            "ValidatingAdmissionPolicy"
        ):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_cluster_scoped_names_follow_the_release() -> None:
    names = {
        (d["kind"], d["metadata"]["name"])
        for d in render(release="blue")
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding")
    }
    assert names == {
        ("ClusterRole", "blue-turnpike"),
        ("ClusterRole", "blue-turnpike-edit"),
        ("ClusterRole", "blue-turnpike-view"),
        ("ClusterRoleBinding", "blue-turnpike"),
    }


def test_operator_pod_is_hardened() -> None:
    deployment = only(render(), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "hostNetwork" not in pod and "hostPID" not in pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(volumes) == {"tmp"} and "emptyDir" in volumes["tmp"]


def parse_operator_args(args: list[str], env: dict[str, str]) -> operator_settings.Settings:
    """The rendered args through `turnpike run`'s own parser: every flag must exist."""
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("TURNPIKE_")]:
            del os.environ[key]
        os.environ.update(env)
        parser = argparse.ArgumentParser(prog="turnpike run", exit_on_error=False)
        operator_settings.add_arguments(parser)
        return operator_settings.from_arguments(parser.parse_args(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_operator_flags_exist_and_mean_what_the_values_say() -> None:
    deployment = only(
        render(
            "--set",
            "operator.watchNamespaces={ml,research}",
            "--set",
            "operator.workers=3",
            "--set",
            "operator.logLevel=debug",
        ),
        "Deployment",
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    settings = parse_operator_args(
        container["args"], {"POD_NAMESPACE": NAMESPACE, "POD_NAME": "turnpike-abc"}
    )
    assert settings.metrics_bind_address == ":8080"
    assert settings.leader_elect is True
    assert settings.leader_election_namespace == NAMESPACE
    assert settings.leader_election_id == "turnpike"
    assert settings.identity == "turnpike-abc"
    assert settings.namespaces == ("ml", "research")
    assert settings.workers == 3
    assert settings.resync_seconds == 60
    assert settings.triton_metrics_port == 8002
    assert (settings.log_level, settings.log_format) == ("debug", "json")
    role = only(render(), "Role")
    lease_rules = [r for r in role["rules"] if r.get("resourceNames")]
    assert lease_rules[0]["resourceNames"] == [settings.leader_election_id]


def test_single_replica_without_leader_election() -> None:
    docs = render("--set", "replicaCount=1", "--set", "operator.leaderElection.enabled=false")
    container = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    settings = parse_operator_args(container["args"], {})
    assert settings.leader_elect is False
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding", "PodDisruptionBudget")]


def test_two_replicas_need_leader_election() -> None:
    result = helm_template_text("--set", "operator.leaderElection.enabled=false", check=False)
    assert result.returncode != 0
    assert "leaderElection" in result.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "unknownKey=1",
        "operator.workers=0",
        "operator.logLevel=verbose",
        "image.digest=latest",
        "operator.metricsPort=80",
    ],
)
def test_values_schema_rejects(bad: str) -> None:
    result = helm_template_text("--set", bad, check=False)
    assert result.returncode != 0
    assert "schema" in result.stderr


def test_image_digest_wins_over_tag() -> None:
    digest = "sha256:" + "a" * 64
    deployment = only(
        render("--set", f"image.digest={digest}", "--set", "image.tag=9.9.9"), "Deployment"
    )
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/turnpike-dev/turnpike@{digest}"


def test_service_monitor_is_optional_and_selects_the_metrics_service() -> None:
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]
    docs = render(
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=prometheus",
    )
    monitor = only(docs, "ServiceMonitor")
    service = only(docs, "Service")
    deployment = only(docs, "Deployment")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_operator_selector_never_matches_model_pods() -> None:
    """Model pods carry name/instance = their ModelDeployment's name; a model called
    "turnpike" must not be selected by the operator's Deployment, Service or PDB."""
    from turnpike.render.labels import COMPONENT

    docs = render()
    selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "operator" != COMPONENT
    assert only(docs, "Service")["spec"]["selector"] == selector
    assert only(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector


# ---------------------------------------------------------------- RBAC, offline


def test_rendered_rbac_equals_the_documented_table() -> None:
    docs = render()
    cluster_role = only(docs, "ClusterRole", "turnpike")
    role = only(docs, "Role")
    expected = documented_rbac(lease_name="turnpike")
    assert rule_permissions(cluster_role["rules"]) == expected[CLUSTER]
    assert rule_permissions(role["rules"]) == expected[RELEASE_NAMESPACE]
    binding = only(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "turnpike", "namespace": NAMESPACE}
    ]


def test_rbac_table_marks_capacity_tier_rules() -> None:
    section = DOCS.read_text().split("\n## RBAC", 1)[1].split("\n## ", 1)[0]
    for row in section.splitlines():
        if "`capacitytiers" in row or "`priorityclasses`" in row:
            assert "for capacity tiers" in row, row


# Kinds the operator's static resource table knows but no code path touches yet.
UNUSED_KINDS = {"Namespace"}


def test_every_kind_the_operator_knows_is_in_the_rbac_table() -> None:
    """A kind added to turnpike.kube.resources needs a row (and a rule) before it is used."""
    documented = {
        (group, resource.split("/")[0])
        for scope in documented_rbac("turnpike").values()
        for group, resource, _, _ in scope
    }
    missing = []
    for resource in KNOWN:
        group = resource.api_version.rpartition("/")[0]
        if resource.kind not in UNUSED_KINDS and (group, resource.plural) not in documented:
            missing.append(f"{resource.kind} ({resource.api_version})")
    assert not missing, f"add RBAC rules and docs/install.md rows for {missing}"


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_shape() -> None:
    """Static checks only: there is no container runtime here to build the image."""
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage build expected"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    assert all(s.startswith("${PYTHON_IMAGE}") for s in stages)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    run_as = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]["runAsUser"]
    assert users[-1] == f"{run_as}:{run_as}"
    entrypoints = re.findall(r"^ENTRYPOINT\s+(.+)$", text, re.MULTILINE)
    assert [json.loads(e) for e in entrypoints] == [["turnpike", "run"]]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["turnpike"] == "turnpike.cli:main"
    copied = re.findall(r"^COPY\s+(?!--from)(\S+)", text, re.MULTILINE)
    assert set(copied) == {"pyproject.toml", "operator/"}


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then allow what the build copies"
    assert {"!pyproject.toml", "!operator/"} <= set(lines)


# ---------------------------------------------------------------- deploy/ examples


def test_grafana_dashboard() -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "turnpike-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["expr"] and t["refId"] for t in panel["targets"])
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for metric in (
        "turnpike_reconcile_total",
        "turnpike_reconcile_duration_seconds_bucket",
        "turnpike_api_writes_total",
        "turnpike_workqueue_depth",
        "turnpike_leader",
        "nv_inference_pending_request_count",
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
    ):
        assert metric in exprs, metric
    for expr in (t["expr"] for p in panels for t in p.get("targets", [])):
        assert expr.count("(") == expr.count(")"), expr
        assert expr.count("{") == expr.count("}"), expr
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "model"} <= variables
    used = set(re.findall(r"\$(\w+)", exprs)) - {"__rate_interval"}
    assert used <= variables, used - variables


def test_dashboard_uses_only_metrics_the_operator_registers() -> None:
    """Every turnpike_* series in the dashboard is one the operator exports (a renamed
    metric would otherwise leave an empty panel)."""
    from turnpike.controller.metrics import Metrics

    exported: set[str] = set()
    for family in Metrics().registry.collect():
        exported |= {sample.name for sample in family.samples} | {family.name}
        if family.type == "histogram":
            exported |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count")}
        if family.type == "counter":
            exported.add(f"{family.name}_total")
    text = (REPO / "deploy" / "grafana" / "turnpike-dashboard.json").read_text()
    used = set(re.findall(r"\bturnpike_[a-z_]+", text))
    assert used, "no operator metrics in the dashboard"
    assert used <= exported, f"not exported by the operator: {sorted(used - exported)}"


def test_argocd_application_renders_the_chart(tmp_path: Path) -> None:
    app = yaml.safe_load((REPO / "deploy" / "argocd" / "application.yaml").read_text())
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    source = app["spec"]["source"]
    assert (REPO / source["path"] / "Chart.yaml").exists()
    assert "resources-finalizer.argocd.argoproj.io" not in app["metadata"].get("finalizers", [])
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))
    docs = render(
        "-f",
        str(values),
        release=source["helm"]["releaseName"],
        namespace=app["spec"]["destination"]["namespace"],
    )
    assert only(docs, "ServiceMonitor")


def test_flux_examples_build_and_render_the_chart(tmp_path: Path) -> None:
    built = run([tool("kubectl"), "kustomize", str(REPO / "deploy" / "flux")]).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    kinds = {(d["apiVersion"], d["kind"]) for d in docs}
    assert kinds == {
        ("source.toolkit.fluxcd.io/v1", "GitRepository"),
        ("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
    }
    release = only(docs, "HelmRelease")
    spec = release["spec"]
    assert (REPO / spec["chart"]["spec"]["chart"] / "Chart.yaml").exists()
    assert (
        spec["chart"]["spec"]["sourceRef"]["name"]
        == only(docs, "GitRepository")["metadata"]["name"]
    )
    assert spec["upgrade"]["crds"] == "CreateReplace"
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(spec["values"]))
    render("-f", str(values), release=spec["releaseName"], namespace=spec["targetNamespace"])


# ---------------------------------------------------------------- kubeconform


def schema_file(root: Path, api_version: str, kind: str) -> Path:
    """kubeconform's {{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json
    (for the core group, .Group is "v1")."""
    group, _, version = api_version.rpartition("/")
    return root / (group or version) / f"{kind.lower()}_{version}.json"


SCHEMA_LOCATION = "{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json"


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) to JSON schema, strict like kubeconform's *-strict
    schemas: objects with properties refuse unknown fields.

    No $schema: kubeconform then reads the schema as draft 4, whose boolean
    exclusiveMinimum/exclusiveMaximum are OpenAPI 3.0's (draft 7's are numbers)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            out[key] = value.replace("#/components/schemas/", "#/definitions/")
        elif key in ("format", "nullable"):
            continue  # Kubernetes formats (int32, int-or-string...) are not JSON schema's
        elif key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = to_json_schema(value)
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        found = {ref.rsplit("/", 1)[1]} if isinstance(ref, str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    return set()


def standalone(components: dict[str, Any], name: str) -> dict[str, Any]:
    """One kind's schema, with every schema it references under definitions."""
    needed: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in needed:
            continue
        needed.add(current)
        todo.extend(_refs(components[current]) - needed)
    schema = to_json_schema(components[name])
    schema["definitions"] = {n: to_json_schema(components[n]) for n in sorted(needed)}
    return dict(schema)


def write_builtin_schemas(
    kubectl: Kubectl, root: Path, api_versions: set[str]
) -> set[tuple[str, str]]:
    """Per-kind schemas of these group versions from the API server's OpenAPI v3."""
    written: set[tuple[str, str]] = set()
    for api_version in sorted(api_versions):
        path = "/openapi/v3/api/v1" if api_version == "v1" else f"/openapi/v3/apis/{api_version}"
        document = json.loads(kubectl.run("get", "--raw", path).stdout)
        components = document["components"]["schemas"]
        group, _, version = api_version.rpartition("/")
        for name, component in components.items():
            for gvk in component.get("x-kubernetes-group-version-kind", []):
                if (gvk["group"], gvk["version"]) != (group, version):
                    continue
                target = schema_file(root, api_version, gvk["kind"])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(standalone(components, name)))
                written.add((api_version, gvk["kind"]))
    return written


def write_crd_schemas(root: Path, crd_dir: Path) -> set[tuple[str, str]]:
    written: set[tuple[str, str]] = set()
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            api_version = f"{spec['group']}/{version['name']}"
            schema = to_json_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            target = schema_file(root, api_version, spec["names"]["kind"])
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(schema))
            written.add((api_version, spec["names"]["kind"]))
    return written


def kubeconform(schemas: Path, files: list[Path], *extra: str) -> list[dict[str, Any]]:
    result = run(
        [
            tool("kubeconform"),
            "-strict",
            "-summary",
            "-verbose",
            "-output",
            "json",
            "-schema-location",
            f"{schemas}/{SCHEMA_LOCATION}",
            *extra,
            *map(str, files),
        ],
        check=False,
    )
    try:
        resources: list[dict[str, Any]] = json.loads(result.stdout)["resources"]
    except (json.JSONDecodeError, KeyError) as error:
        raise AssertionError(f"kubeconform: {result.stdout}\n{result.stderr}") from error
    return resources


@pytest.fixture(scope="module")
def schemas(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Schemas of every kind the chart, its CRDs and the examples use, all local."""
    root = tmp_path_factory.mktemp("schemas")
    write_crd_schemas(root, REPO / "crds")
    builtin = {
        "v1",
        "apps/v1",
        "policy/v1",
        "rbac.authorization.k8s.io/v1",
        "apiextensions.k8s.io/v1",
        "admissionregistration.k8s.io/v1",
    }
    written = write_builtin_schemas(kubectl, root, builtin)
    assert ("apps/v1", "Deployment") in written and ("v1", "Service") in written
    return root


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = helm_template_text(
        "--include-crds", "--set", "metrics.serviceMonitor.enabled=true"
    ).stdout
    path = tmp_path_factory.mktemp("rendered") / "turnpike.yaml"
    path.write_text(out)
    return path


@pytest.mark.cluster
def test_kubeconform_validates_every_rendered_object(schemas: Path, rendered: Path) -> None:
    examples = sorted((REPO / "examples").glob("*.yaml"))
    results = kubeconform(schemas, [rendered, *examples], "-skip", "/".join(SERVICE_MONITOR))
    by_status: dict[str, set[tuple[str, str]]] = {}
    for r in results:
        by_status.setdefault(r["status"], set()).add((r["version"], r["kind"]))
    problems = [r for r in results if r["status"] not in ("statusValid", "statusSkipped")]
    assert not problems, json.dumps(problems, indent=2)
    assert by_status.get("statusSkipped") == {SERVICE_MONITOR}, "only ServiceMonitor may be skipped"
    expected_valid = {
        ("v1", "ServiceAccount"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("policy/v1", "PodDisruptionBudget"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        ("turnpike.dev/v1alpha1", "ModelDeployment"),
        ("turnpike.dev/v1alpha1", "CapacityTier"),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"),
    }
    assert by_status.get("statusValid") == expected_valid
    rendered_count = sum(1 for d in yaml.safe_load_all(rendered.read_text()) if d)
    example_count = sum(1 for p in examples for d in yaml.safe_load_all(p.read_text()) if d)
    assert len(results) == rendered_count + example_count


@pytest.mark.cluster
def test_kubeconform_schemas_are_strict(schemas: Path, rendered: Path, tmp_path: Path) -> None:
    """The generated schemas reject what the API server would: a control for the test above."""
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    deployment = only(docs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = 1
    service = only(docs, "Service")
    service["spec"]["ports"][0]["port"] = "eighty"
    md = yaml.safe_load((REPO / "examples" / "bert-onnx-a100.yaml").read_text())
    md["spec"]["gpuCount"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([deployment, service, md]))
    results = kubeconform(schemas, [bad])
    assert [r["status"] for r in results] == ["statusInvalid"] * 3, json.dumps(results, indent=2)
    messages = " ".join(r["msg"] for r in results)
    assert "runAsNonroot" in messages and "gpuCount" in messages
