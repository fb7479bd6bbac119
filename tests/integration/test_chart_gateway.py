"""The chart's opt-in request gateway (`gateway.enabled`): rendered with `helm template`.

No cluster: every check reads what `helm template` renders, through the same
parsers the pods would use (the gateway's and the operator's argument parsers,
the gateway's config parser, the gateway's own HTTP routes), so a flag, path or
key that the chart invents and the code does not know fails here, not in a
CrashLoopBackOff. Pod Security `restricted` is checked by rules written out
below (the admission plugin itself needs an API server; test_rbac.py installs
the operator's pods under it on the local cluster).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from tests.integration.test_chart import (
    CHART,
    DOCS,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Permission,
    helm_template_text,
    only,
    parse_operator_args,
    render,
    rule_permissions,
    run,
    tool,
)
from turnpike.gateway.command import add_arguments, parse_listen
from turnpike.gateway.config import GatewayConfig, parse_config
from turnpike.gateway.routing import PICKERS

GATEWAY = f"{RELEASE}-gateway"  # the chart's full name for release "turnpike", suffixed
ON = ("--set", "gateway.enabled=true")
COMPONENT = "app.kubernetes.io/component"


# ---------------------------------------------------------------- helpers


def gateway_objects(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything that belongs to the gateway: by its labels, or by its name."""
    return [
        d
        for d in docs
        if d["metadata"].get("labels", {}).get(COMPONENT) == "gateway"
        or "gateway" in d["metadata"]["name"]
    ]


def deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return only(docs, "Deployment", name)


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (single,) = workload["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = single
    return result


class _Refusing(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so a refused flag names itself in the test."""

    def error(self, message: str) -> NoReturn:
        raise AssertionError(f"{self.prog} refuses the rendered args: {message}")


@pytest.fixture
def no_gateway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's flags default from TURNPIKE_GATEWAY_* at parser build time; the
    rendered args must stand on their own, so none of those may leak in from here."""
    for key in [k for k in os.environ if k.startswith("TURNPIKE_GATEWAY_")]:
        monkeypatch.delenv(key)


def parse_gateway_args(rendered: dict[str, Any]) -> argparse.Namespace:
    """The container's args through `turnpike gateway`'s own parser (not a copy of it)."""
    assert rendered["command"] == ["turnpike", "gateway"], rendered["command"]
    parser = _Refusing(prog="turnpike gateway")
    add_arguments(parser)
    return parser.parse_args(rendered["args"])


def parse_selector(selector: str) -> dict[str, str]:
    """A Kubernetes equality-based label selector (k=v,k=v) as a dict; anything else
    (set-based terms, !=) would not be what the chart means to render."""
    pairs = [term.split("=") for term in selector.split(",")]
    assert all(len(p) == 2 and p[0] and p[1] for p in pairs), selector
    return {k: v for k, v in pairs}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def flag_values(args: list[str], flag: str) -> list[str]:
    """Values of --flag=value in args (the chart's style for every valued flag)."""
    return [a.split("=", 1)[1] for a in args if a.startswith(f"{flag}=")]


def documented_gateway_rbac() -> set[Permission]:
    """The "Gateway RBAC" table of docs/install.md, as (group, resource, "", verb)."""
    text = DOCS.read_text()
    assert "\n### Gateway RBAC" in text, "no Gateway RBAC section in docs/install.md"
    section = re.split(r"\n#{1,3} ", text.split("\n### Gateway RBAC", 1)[1], maxsplit=1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "no table in the Gateway RBAC section of docs/install.md"
    found: set[Permission] = set()
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 4, f"Gateway RBAC row needs 4 cells: {row}"
        group_cell, resource_cell, verbs_cell, why = cells
        assert why, f"Gateway RBAC row without a reason: {row}"
        group = group_cell.strip("`").replace('""', "")
        (resource,) = re.findall(r"`([^`]+)`", resource_cell)
        found |= {(group, resource, "", v.strip()) for v in verbs_cell.split(",")}
    return found


def pod_templates(docs: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


# Pod Security Standards, `restricted` profile (which includes `baseline`), as of
# Kubernetes 1.30+: https://kubernetes.io/docs/concepts/security/pod-security-standards/
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What Pod Security admission at `restricted` would refuse in this pod spec."""
    problems: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(f"{field}: true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUME_TYPES)}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']}")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser: 0")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        problems.append(f"pod seccompProfile {pod_seccomp}")
    for se_key in ("user", "role"):
        if (pod_sc.get("seLinuxOptions") or {}).get(se_key):
            problems.append(f"pod seLinuxOptions.{se_key}")
    containers = [
        *(pod.get("initContainers") or []),
        *(pod.get("containers") or []),
        *(pod.get("ephemeralContainers") or []),
    ]
    assert containers, "a pod without containers"
    for c in containers:
        name = c["name"]
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities.add {caps['add']}")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser: 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount {sc['procMount']}")
        for se_key in ("user", "role"):
            if (sc.get("seLinuxOptions") or {}).get(se_key):
                problems.append(f"{name}: seLinuxOptions.{se_key}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
    return problems


# ---------------------------------------------------------------- off by default


def test_disabled_by_default_renders_no_gateway() -> None:
    docs = render()
    assert gateway_objects(docs) == []
    args = container(deployment(docs, RELEASE))["args"]
    assert not [a for a in args if a.startswith("--gateway")], args
    assert yaml.safe_load((CHART / "values.yaml").read_text())["gateway"]["enabled"] is False


# ---------------------------------------------------------------- what it renders


def test_enabled_renders_the_gateway_objects() -> None:
    docs = render(*ON)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in gateway_objects(docs))
    assert kinds == sorted(
        [
            ("ServiceAccount", GATEWAY),
            ("ConfigMap", GATEWAY),
            ("Deployment", GATEWAY),
            ("Service", GATEWAY),
            ("PodDisruptionBudget", GATEWAY),
            ("ClusterRole", GATEWAY),
            ("ClusterRoleBinding", GATEWAY),
        ]
    )
    for doc in gateway_objects(docs):
        if not doc["kind"].startswith("Cluster"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]
    # The operator's own objects are all still there, unchanged in number.
    without = sorted((d["kind"], d["metadata"]["name"]) for d in render())
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(without + kinds)


def test_gateway_deployment_shape() -> None:
    docs = render(*ON)
    gw = deployment(docs, GATEWAY)
    assert gw["spec"]["replicas"] == 2
    assert gw["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = gw["spec"]["template"]["spec"]
    c = container(gw)
    # Same image as the operator by default, a different command of it.
    assert c["image"] == container(deployment(docs, RELEASE))["image"]
    assert c["command"] == ["turnpike", "gateway"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert {"cpu", "memory"} <= set(c["resources"]["limits"])
    assert pod["serviceAccountName"] == only(docs, "ServiceAccount", GATEWAY)["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True  # in-cluster config for discovery
    # Soft spreading over nodes: never leaves a replica Pending on a small cluster.
    anti = pod["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == gw["spec"]["selector"]["matchLabels"]
    )


def test_probe_paths_are_routes_of_the_real_gateway() -> None:
    """The probes' paths must be served by the gateway's app, or the kubelet kills it."""
    from turnpike.gateway.endpoints import StaticEndpoints
    from turnpike.gateway.server import Gateway

    app = Gateway(parse_config({}), StaticEndpoints()).app()
    served = {
        route.resource.canonical
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    }
    c = container(deployment(render(*ON), GATEWAY))
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in served, (probe, sorted(served))
    assert "/metrics" in served


def test_service_and_pdb_select_the_gateway_pods() -> None:
    docs = render(*ON)
    gw = deployment(docs, GATEWAY)
    selector = gw["spec"]["selector"]["matchLabels"]
    pod_labels = gw["spec"]["template"]["metadata"]["labels"]
    assert selects(selector, pod_labels)
    service = only(docs, "Service", GATEWAY)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    pdb = only(docs, "PodDisruptionBudget", GATEWAY)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    # The operator's Service and PDB must not pick up gateway pods, nor the gateway's
    # the operator's: each would otherwise route or budget the other's pods.
    operator = deployment(docs, RELEASE)
    operator_labels = operator["spec"]["template"]["metadata"]["labels"]
    assert not selects(selector, operator_labels)
    for kind, name in (("Service", f"{RELEASE}-metrics"), ("PodDisruptionBudget", RELEASE)):
        doc = only(docs, kind, name)
        their = doc["spec"]["selector"]
        their = their.get("matchLabels", their)
        assert not selects(their, pod_labels), f"{kind}/{name} selects gateway pods"


def test_single_replica_has_no_pdb() -> None:
    """A PDB of maxUnavailable 1 over one pod protects nothing; like the operator's,
    it is rendered only with more than one replica."""
    docs = render(*ON, "--set", "gateway.replicas=1")
    assert deployment(docs, GATEWAY)["spec"]["replicas"] == 1
    assert not [d for d in gateway_objects(docs) if d["kind"] == "PodDisruptionBudget"]


def test_image_defaults_to_the_operators_and_can_be_overridden() -> None:
    digest = "sha256:" + "b" * 64

    def image(*values: str) -> str:
        result: str = container(deployment(render(*ON, *values), GATEWAY))["image"]
        return result

    assert image() == "ghcr.io/turnpike-dev/turnpike:0.1.0"
    assert image("--set", "image.tag=1.2.3") == "ghcr.io/turnpike-dev/turnpike:1.2.3"
    assert image("--set", "gateway.image.tag=9.9.9") == "ghcr.io/turnpike-dev/turnpike:9.9.9"
    assert image("--set", f"gateway.image.digest={digest}") == (
        f"ghcr.io/turnpike-dev/turnpike@{digest}"
    )
    # A repository of its own never inherits the operator's tag.
    assert image("--set", "gateway.image.repository=r.example/gw", "--set", "image.tag=1.2.3") == (
        "r.example/gw:0.1.0"
    )
    policy = container(deployment(render(*ON, "--set", "image.pullPolicy=Never"), GATEWAY))
    assert policy["imagePullPolicy"] == "Never"


# ---------------------------------------------------------------- Pod Security


def test_every_container_passes_restricted_pod_security() -> None:
    docs = render(*ON, "--set", "gateway.namespaces={a,b}")
    templates = dict(pod_templates(docs))
    assert set(templates) == {f"Deployment/{RELEASE}", f"Deployment/{GATEWAY}"}
    for name, pod in templates.items():
        assert restricted_violations(pod) == [], name
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, name


@pytest.mark.parametrize(
    "spoil",
    [
        lambda pod: pod["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        lambda pod: pod["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
        lambda pod: pod["containers"][0]["securityContext"].update(runAsNonRoot=False),
        lambda pod: (
            pod["containers"][0]["securityContext"].pop("seccompProfile"),
            pod["securityContext"].pop("seccompProfile"),
        ),
        lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        lambda pod: pod.update(hostNetwork=True),
    ],
    ids=["escalation", "capabilities", "root", "seccomp", "hostPath", "hostNetwork"],
)
def test_restricted_check_is_not_vacuous(spoil: Any) -> None:
    """A control for the check above: each spoiled gateway pod is caught."""
    pod = deployment(render(*ON), GATEWAY)["spec"]["template"]["spec"]
    spoil(pod)
    assert restricted_violations(pod)


# ---------------------------------------------------------------- flags


@pytest.mark.usefixtures("no_gateway_env")
def test_gateway_args_are_accepted_by_the_real_parser() -> None:
    docs = render(*ON)
    gw = deployment(docs, GATEWAY)
    c = container(gw)
    args = parse_gateway_args(c)
    assert parse_listen(args.listen) == ("0.0.0.0", c["ports"][0]["containerPort"])
    assert args.routing == "least-outstanding"
    assert args.scrape_interval == 1.0
    assert (args.log_level, args.log_format) == ("info", "json")
    assert args.static_endpoints is None  # discovery from the API server
    assert not args.namespace  # every namespace
    # --config is the file the ConfigMap puts in the mounted directory.
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "config"]
    (volume,) = [v for v in gw["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    assert mount["readOnly"] is True
    assert args.config.parent == Path(mount["mountPath"])
    configmap = only(docs, "ConfigMap", GATEWAY)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert args.config.name in configmap["data"]


@pytest.mark.usefixtures("no_gateway_env")
def test_gateway_values_reach_the_flags() -> None:
    c = container(
        deployment(
            render(
                *ON,
                "--set",
                "gateway.port=9090",
                "--set",
                "gateway.routing=power-of-two",
                # --set reads 0.5 as a string; the schema wants a number.
                "--set-json",
                "gateway.scrapeIntervalSeconds=0.5",
                "--set",
                "gateway.logLevel=debug",
                "--set",
                "gateway.logFormat=text",
                "--set",
                "gateway.extraArgs={--static-endpoints=m=10.0.0.1:8000}",
            ),
            GATEWAY,
        )
    )
    args = parse_gateway_args(c)
    assert parse_listen(args.listen) == ("0.0.0.0", 9090)
    assert c["ports"][0]["containerPort"] == 9090
    assert args.routing == "power-of-two"
    assert args.scrape_interval == 0.5
    assert (args.log_level, args.log_format) == ("debug", "text")
    assert args.static_endpoints == "m=10.0.0.1:8000"


def test_the_image_has_a_gateway_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`turnpike gateway`, the container's command, is a subcommand of the image's CLI."""
    from turnpike.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["gateway", "--help"])
    assert exit_.value.code == 0
    assert "--listen" in capsys.readouterr().out


def test_operator_gateway_selector_matches_exactly_the_gateway_pods() -> None:
    for release in (RELEASE, "blue"):
        docs = render(*ON, release=release)
        gateway_name = f"{release}-turnpike-gateway" if release == "blue" else GATEWAY
        operator_name = f"{release}-turnpike" if release == "blue" else RELEASE
        gw = deployment(docs, gateway_name)
        operator = deployment(docs, operator_name)
        args = container(operator)["args"]
        (selector_text,) = flag_values(args, "--gateway-selector")
        selector = parse_selector(selector_text)
        gateway_labels = gw["spec"]["template"]["metadata"]["labels"]
        operator_labels = operator["spec"]["template"]["metadata"]["labels"]
        assert selector == gw["spec"]["selector"]["matchLabels"], release
        assert selects(selector, gateway_labels), release
        assert not selects(selector, operator_labels), release
        assert selector[COMPONENT] == "gateway"
        assert selector["app.kubernetes.io/instance"] == release
        assert flag_values(args, "--gateway-namespace") == [NAMESPACE]
        assert flag_values(args, "--gateway-port") == [
            str(container(gw)["ports"][0]["containerPort"])
        ]


def test_gateway_selector_never_matches_model_pods() -> None:
    """Model pods carry name/instance = their ModelDeployment's name: a model called
    "turnpike" must still not look like a gateway to the operator."""
    from turnpike.render.labels import COMPONENT as MODEL_COMPONENT

    args = container(deployment(render(*ON), RELEASE))["args"]
    (selector_text,) = flag_values(args, "--gateway-selector")
    assert parse_selector(selector_text)[COMPONENT] != MODEL_COMPONENT


def test_operator_polls_what_the_gateway_serves() -> None:
    """The operator's rendered flags through `turnpike run`'s own parser and settings:
    it must find the gateway pods (selector, namespace) and poll a path the gateway
    serves on the port the gateway listens on, or scale-from-zero never wakes."""
    from turnpike.controller.gateways import ready_urls
    from turnpike.gateway.endpoints import StaticEndpoints
    from turnpike.gateway.load import PATH
    from turnpike.gateway.server import Gateway

    docs = render(*ON)
    operator = container(deployment(docs, RELEASE))
    settings = parse_operator_args(
        operator["args"], {"POD_NAMESPACE": NAMESPACE, "POD_NAME": "turnpike-abc"}
    )
    gw = deployment(docs, GATEWAY)
    assert settings.gateway_selector is not None
    assert parse_selector(settings.gateway_selector) == gw["spec"]["selector"]["matchLabels"]
    assert settings.gateway_namespace == NAMESPACE == gw["metadata"]["namespace"]
    port = container(gw)["ports"][0]["containerPort"]
    assert settings.gateway_port == port
    pod = {
        "metadata": {"labels": gw["spec"]["template"]["metadata"]["labels"]},
        "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    (url,) = ready_urls([pod], settings.gateway_port)
    assert url == f"http://10.1.2.3:{port}{PATH}"
    app = Gateway(parse_config({}), StaticEndpoints()).app()
    assert PATH in {r.resource.canonical for r in app.router.routes() if r.resource is not None}


# ---------------------------------------------------------------- RBAC


def test_gateway_rbac_equals_the_documented_table() -> None:
    docs = render(*ON)
    expected = documented_gateway_rbac()
    role = only(docs, "ClusterRole", GATEWAY)
    assert rule_permissions(role["rules"]) == expected
    binding = only(docs, "ClusterRoleBinding", GATEWAY)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": GATEWAY,
    }
    account = {"kind": "ServiceAccount", "name": GATEWAY, "namespace": NAMESPACE}
    assert binding["subjects"] == [account]
    # Nothing else is bound to the gateway's ServiceAccount, and it is not the operator's.
    bound = [
        d
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding") and account in d["subjects"]
    ]
    assert bound == [binding]
    assert deployment(docs, RELEASE)["spec"]["template"]["spec"]["serviceAccountName"] != GATEWAY


def test_documented_gateway_rbac_is_read_only() -> None:
    """A guard on the table itself: least privilege means no verb that changes anything."""
    verbs = {verb for *_, verb in documented_gateway_rbac()}
    assert verbs <= {"get", "list", "watch"}
    assert {(g, r) for g, r, _, _ in documented_gateway_rbac()} == {
        ("turnpike.dev", "modeldeployments"),
        ("", "pods"),
    }


@pytest.mark.usefixtures("no_gateway_env")
def test_namespaces_give_roles_and_namespace_flags() -> None:
    docs = render(*ON, "--set", "gateway.namespaces={a,b}")
    mine = gateway_objects(docs)
    assert not [d for d in mine if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {d["metadata"]["namespace"]: d for d in mine if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in mine if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"a", "b"}
    expected = documented_gateway_rbac()
    for namespace in ("a", "b"):
        assert rule_permissions(roles[namespace]["rules"]) == expected
        assert bindings[namespace]["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        assert bindings[namespace]["roleRef"]["kind"] == "Role"
        assert bindings[namespace]["subjects"] == [
            {"kind": "ServiceAccount", "name": GATEWAY, "namespace": NAMESPACE}
        ]
    c = container(deployment(docs, GATEWAY))
    assert flag_values(c["args"], "--namespace") == ["a", "b"]
    assert parse_gateway_args(c).namespace == ["a", "b"]


def test_rbac_create_false_leaves_gateway_rbac_to_you() -> None:
    docs = render(*ON, "--set", "rbac.create=false")
    rbac = [d for d in gateway_objects(docs) if d["apiVersion"].startswith("rbac.")]
    assert rbac == []
    assert only(docs, "ServiceAccount", GATEWAY)


# ---------------------------------------------------------------- config


def test_config_round_trips_through_the_gateway_parser(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "tiers": {
            "default": {},
            "premium": {"priority": 10, "weight": 3, "reserved": True},
            "batch": {"priority": -5, "weight": 0.5},
        },
        "tenants": {
            "acme": {"tier": "premium", "apiKeySha256": [hashlib.sha256(b"k1").hexdigest()]},
            "lab": {"tier": "batch", "headerValues": ["lab", "lab-ci"]},
        },
        "tenantHeader": "X-Tenant",
        "defaultTier": "default",
        "defaults": {"queueLimit": 64, "maxInFlightPerReplica": 4},
        "deployments": {
            "llama-8b": {
                "tritonModel": "ensemble",
                "sloThresholdMilliseconds": 500,
                "maxReplicas": 6,
                "openai": {"dialect": "trtllm", "maxTokensDefault": 128},
            }
        },
        "maxBodyBytes": 1048576,
        "upstreamReadTimeoutSeconds": 120.5,
    }
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"gateway": {"enabled": True, "config": config}}))
    configmap = only(render("-f", str(values)), "ConfigMap", GATEWAY)
    (key,) = configmap["data"]
    loaded = yaml.safe_load(configmap["data"][key])
    assert loaded == config
    assert parse_config(loaded) == parse_config(config)
    assert parse_config(loaded).limits("llama-8b").triton_model == "ensemble"


def test_no_default_tier_survives_helm(tmp_path: Path) -> None:
    """`defaultTier: null` means "no credentials, no service" (401). Helm deletes
    nulls that override a chart default; this one must reach the gateway."""
    values = tmp_path / "values.yaml"
    values.write_text("gateway:\n  enabled: true\n  config:\n    defaultTier: null\n")
    for source in (("-f", str(values)), ("--set", "gateway.config.defaultTier=null")):
        configmap = only(render(*ON, *source), "ConfigMap", GATEWAY)
        (text,) = configmap["data"].values()
        assert parse_config(yaml.safe_load(text)).default_tier is None, source


def test_default_config_is_the_gateways_default() -> None:
    configmap = only(render(*ON), "ConfigMap", GATEWAY)
    (text,) = configmap["data"].values()
    assert parse_config(yaml.safe_load(text)) == GatewayConfig()


def test_config_change_rolls_the_pods() -> None:
    def checksum(*values: str) -> str:
        gw = deployment(render(*ON, *values), GATEWAY)
        result: str = gw["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return result

    base = checksum()
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum("--set", "gateway.replicas=3") == base
    assert checksum("--set", "gateway.config.defaults.queueLimit=8") != base


def test_pod_annotations_keep_the_checksum() -> None:
    gw = deployment(render(*ON, "--set", "gateway.podAnnotations.team=ml"), GATEWAY)
    annotations = gw["spec"]["template"]["metadata"]["annotations"]
    assert annotations["team"] == "ml" and "checksum/config" in annotations


def test_plain_api_keys_are_refused() -> None:
    """A ConfigMap is readable with the built-in view role: keys go in as digests."""
    result = helm_template_text(
        *ON,
        "--set",
        "gateway.config.tenants.acme.tier=default",
        "--set",
        "gateway.config.tenants.acme.apiKeys={secret-key}",
        check=False,
    )
    assert result.returncode != 0
    assert "apiKeySha256" in result.stderr
    assert "secret-key" not in result.stderr


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("bad", "names"),
    [
        ("gateway.replicas=-1", "replicas"),
        ("gateway.unknownKey=1", "unknownKey"),
        ("gateway.routing=fastest", "routing"),
        ("gateway.port=80", "port"),
        ("gateway.scrapeIntervalSeconds=-1", "scrapeIntervalSeconds"),
        ("gateway.namespaces={Not_A_Namespace}", "namespaces"),
        ("gateway.logFormat=xml", "logFormat"),
        ("gateway.config.tierz.gold.weight=1", "tierz"),
        ("gateway.image.digest=latest", "digest"),
        ("gateway.service.type=ExternalName", "type"),
    ],
)
def test_values_schema_refuses(bad: str, names: str) -> None:
    result = helm_template_text(*ON, "--set", bad, check=False)
    assert result.returncode != 0, bad
    assert "schema" in result.stderr, result.stderr
    assert names in result.stderr, result.stderr


def test_schema_follows_the_code() -> None:
    """The schema's closed lists are the code's: a new routing or config key is
    refused by Helm until the chart learns it, and this test says which."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    gateway = schema["properties"]["gateway"]
    assert gateway["additionalProperties"] is False
    assert tuple(gateway["properties"]["routing"]["enum"]) == PICKERS
    config = gateway["properties"]["config"]
    assert config["additionalProperties"] is False
    aliases = {f.alias or n for n, f in GatewayConfig.model_fields.items()}
    assert set(config["properties"]) == aliases
    values = yaml.safe_load((CHART / "values.yaml").read_text())["gateway"]
    assert set(values) == set(gateway["properties"]), "document every gateway value"


def test_helm_lint_with_the_gateway() -> None:
    for extra in ([], ["--set", "gateway.namespaces={ml,research}", "--set", "gateway.replicas=1"]):
        run(
            [
                tool("helm"),
                "lint",
                "--strict",
                str(CHART),
                "--kube-version",
                KUBE_VERSION,
                *ON,
                *extra,
            ]
        )
