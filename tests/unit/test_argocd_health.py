"""deploy/argocd/health.lua, run the way Argo CD runs it: `obj` set, the chunk returns hs.

Argo CD embeds gopher-lua (Lua 5.1); the script is run under Lua 5.1 and 5.4 here so
it relies on nothing newer, and nothing removed since.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "deploy" / "argocd" / "health.lua"
CM_PATCH = REPO / "deploy" / "argocd" / "argocd-cm-patch.yaml"
KINDS = ("ModelDeployment", "CapacityTier")
LUA_VERSIONS = ("lupa.lua51", "lupa.lua54")
STAMP = "2026-01-01T00:00:00Z"


def lua_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - depends on how lupa was built
        pytest.skip(f"{name} is not available in this lupa build")


def health(obj: dict[str, Any], version: str = "lupa.lua51") -> dict[str, str]:
    lupa = lua_module(version)
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(HEALTH_LUA.read_text())
    assert result is not None, "health.lua must return hs"
    return {str(k): str(v) for k, v in dict(result).items()}


def condition(
    type_: str, status: str, reason: str, message: str = "", generation: int | None = None
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": STAMP,
    }
    if generation is not None:
        c["observedGeneration"] = generation
    return c


def md(
    generation: int = 3,
    observed: int | None = 3,
    conditions: list[dict[str, Any]] | None = None,
    kind: str = "ModelDeployment",
    with_status: bool = True,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "llama", "namespace": "ml", "generation": generation},
        "spec": {},
    }
    if with_status:
        status: dict[str, Any] = {"conditions": conditions or [], "replicas": 2}
        if observed is not None:
            status["observedGeneration"] = observed
        obj["status"] = status
    return obj


def ready(generation: int = 3) -> list[dict[str, Any]]:
    return [
        condition("Ready", "True", "Available", "2/2 replicas ready", generation),
        condition("Progressing", "False", "Complete", "", generation),
        condition("Degraded", "False", "AsExpected", "", generation),
    ]


@pytest.mark.parametrize("version", LUA_VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_ready_at_current_generation_is_healthy(version: str, kind: str) -> None:
    hs = health(md(conditions=ready(), kind=kind), version)
    assert hs == {"status": "Healthy", "message": "2/2 replicas ready"}


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_rolling_out_is_progressing_with_the_reason(version: str) -> None:
    conditions = [
        condition("Ready", "False", "RollingOut", "1/2 replicas ready", 3),
        condition("Progressing", "True", "RollingOut", "waiting for 1 more replica", 3),
        condition("Degraded", "False", "AsExpected", "", 3),
    ]
    hs = health(md(conditions=conditions), version)
    assert hs == {"status": "Progressing", "message": "waiting for 1 more replica"}


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_degraded_wins_over_ready(version: str) -> None:
    conditions = [
        condition("Ready", "True", "Available", "2/2 replicas ready", 3),
        condition("Degraded", "True", "SecretMissing", "secret hf-token not found", 3),
    ]
    hs = health(md(conditions=conditions), version)
    assert hs == {"status": "Degraded", "message": "secret hf-token not found"}


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_degraded_without_message_reports_the_reason(version: str) -> None:
    conditions = [condition("Degraded", "True", "InvalidSpec", "", 3)]
    assert health(md(conditions=conditions), version) == {
        "status": "Degraded",
        "message": "InvalidSpec",
    }


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_stale_observed_generation_is_progressing_even_if_ready(version: str) -> None:
    """The user changed the spec (generation 4); the status still describes generation 3."""
    hs = health(md(generation=4, observed=3, conditions=ready(3)), version)
    assert hs["status"] == "Progressing"
    assert "generation 4" in hs["message"] and "generation 3" in hs["message"]


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_stale_degraded_is_progressing(version: str) -> None:
    """A Degraded condition about an older spec says nothing about the new one (kstatus)."""
    conditions = [condition("Degraded", "True", "InvalidSpec", "bad gpu count", 3)]
    hs = health(md(generation=4, observed=3, conditions=conditions), version)
    assert hs["status"] == "Progressing"


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_ready_condition_stale_on_its_own_is_progressing(version: str) -> None:
    conditions = ready(3)
    hs = health(md(generation=4, observed=4, conditions=conditions), version)
    assert hs["status"] == "Progressing"


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_ready_without_any_observed_generation_is_not_healthy(version: str) -> None:
    conditions = [condition("Ready", "True", "Available", "2/2 replicas ready")]
    hs = health(md(observed=None, conditions=conditions), version)
    assert hs["status"] == "Progressing"


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_ready_with_only_the_condition_generation_is_healthy(version: str) -> None:
    hs = health(md(observed=None, conditions=ready(3)), version)
    assert hs["status"] == "Healthy"


@pytest.mark.parametrize("version", LUA_VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_no_status_is_progressing(version: str, kind: str) -> None:
    hs = health(md(with_status=False, kind=kind), version)
    assert hs["status"] == "Progressing"
    assert hs["message"]


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_status_without_conditions_is_progressing(version: str) -> None:
    assert health(md(conditions=[]), version)["status"] == "Progressing"


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_not_ready_without_progressing_reports_ready_message(version: str) -> None:
    conditions = [condition("Ready", "False", "Unschedulable", "no node with 8 free H100s", 3)]
    assert health(md(conditions=conditions), version) == {
        "status": "Progressing",
        "message": "no node with 8 free H100s",
    }


SLO_MESSAGE = "queue SLO (99% of requests within 50ms over 60m): burn rate 14.4 over 5m"


@pytest.mark.parametrize("version", LUA_VERSIONS)
@pytest.mark.parametrize("reason", ["Burning", "BudgetLimited", "MetricsUnavailable"])
def test_slo_not_met_is_a_warning_not_degraded(version: str, reason: str) -> None:
    conditions = [*ready(), condition("SLOMet", "False", reason, SLO_MESSAGE, 3)]
    assert health(md(conditions=conditions), version) == {
        "status": "Healthy",
        "message": f"2/2 replicas ready; SLO not met ({reason}): {SLO_MESSAGE}",
    }


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_slo_not_met_keeps_degraded_and_progressing(version: str) -> None:
    slo = condition("SLOMet", "False", "Burning", "too slow", 3)
    degraded = [
        condition("Ready", "True", "Available", "2/2 replicas ready", 3),
        condition("Degraded", "True", "SecretMissing", "secret hf-token not found", 3),
        slo,
    ]
    assert health(md(conditions=degraded), version) == {
        "status": "Degraded",
        "message": "secret hf-token not found; SLO not met (Burning): too slow",
    }
    rolling = [
        condition("Ready", "False", "RollingOut", "1/2 replicas ready", 3),
        condition("Progressing", "True", "RollingOut", "waiting for 1 more replica", 3),
        slo,
    ]
    assert health(md(conditions=rolling), version) == {
        "status": "Progressing",
        "message": "waiting for 1 more replica; SLO not met (Burning): too slow",
    }


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_slo_not_met_without_message_names_the_reason(version: str) -> None:
    conditions = [*ready(), condition("SLOMet", "False", "MetricsUnavailable", "", 3)]
    hs = health(md(conditions=conditions), version)
    assert hs == {
        "status": "Healthy",
        "message": "2/2 replicas ready; SLO not met (MetricsUnavailable)",
    }


@pytest.mark.parametrize("version", LUA_VERSIONS)
@pytest.mark.parametrize("status", ["True", "Unknown"])
def test_slo_met_or_unknown_adds_nothing(version: str, status: str) -> None:
    conditions = [*ready(), condition("SLOMet", status, "Met", "attainment 99.9%", 3)]
    assert health(md(conditions=conditions), version) == {
        "status": "Healthy",
        "message": "2/2 replicas ready",
    }


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_stale_slo_condition_adds_nothing(version: str) -> None:
    """An SLOMet about an older spec (another threshold, say) says nothing about this one."""
    conditions = [*ready(4), condition("SLOMet", "False", "Burning", "too slow", 3)]
    hs = health(md(generation=4, observed=4, conditions=conditions), version)
    assert hs == {"status": "Healthy", "message": "2/2 replicas ready"}


def test_script_does_not_change_the_object() -> None:
    obj = md(conditions=ready())
    before = copy.deepcopy(obj)
    health(obj)
    assert obj == before


@pytest.mark.parametrize("kind", KINDS)
def test_configmap_patch_embeds_the_script_verbatim(kind: str) -> None:
    patch = yaml.safe_load(CM_PATCH.read_text())
    assert patch["apiVersion"] == "v1" and patch["kind"] == "ConfigMap"
    assert patch["metadata"]["name"] == "argocd-cm"
    key = f"resource.customizations.health.turnpike.dev_{kind}"
    assert patch["data"][key] == HEALTH_LUA.read_text(), (
        f"{CM_PATCH.name} {key} differs from health.lua: paste health.lua into it again"
    )


def test_configmap_patch_has_only_turnpike_keys() -> None:
    patch = yaml.safe_load(CM_PATCH.read_text())
    assert set(patch["data"]) == {
        *(f"resource.customizations.health.turnpike.dev_{kind}" for kind in KINDS),
        LWS_KEY,
    }


# --- LeaderWorkerSet (the workload of a multi-node ModelDeployment) -------------------

LWS_HEALTH_LUA = REPO / "deploy" / "argocd" / "leaderworkerset-health.lua"
LWS_KEY = "resource.customizations.health.leaderworkerset.x-k8s.io_LeaderWorkerSet"


def lws_health(obj: dict[str, Any], version: str = "lupa.lua51") -> dict[str, str]:
    lupa = lua_module(version)
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(LWS_HEALTH_LUA.read_text())
    assert result is not None, "leaderworkerset-health.lua must return hs"
    return {str(k): str(v) for k, v in dict(result).items()}


def lws(replicas: int, status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "llama-405b", "generation": 3},
        "spec": {"replicas": replicas},
    }
    if status is not None:
        obj["status"] = status
    return obj


def lws_condition(type_: str) -> list[dict[str, str]]:
    return [{"type": type_, "status": "True", "reason": "r", "message": "m"}]


@pytest.mark.parametrize("version", LUA_VERSIONS)
@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (lws(2, None), ("Progressing", "Waiting for the LeaderWorkerSet controller")),
        (
            lws(2, {"readyReplicas": 2, "replicas": 2, "conditions": lws_condition("Available")}),
            ("Healthy", "2/2 groups ready"),
        ),
        (
            lws(2, {"readyReplicas": 1, "replicas": 2, "conditions": lws_condition("Progressing")}),
            ("Progressing", "1/2 groups ready"),
        ),
        (
            lws(2, {"readyReplicas": 1, "conditions": lws_condition("Available")}),
            ("Progressing", "1/2 groups ready"),
        ),
        (
            lws(
                2,
                {
                    "readyReplicas": 2,
                    "updatedReplicas": 1,
                    "conditions": lws_condition("UpdateInProgress"),
                },
            ),
            ("Progressing", "Rolling update: 1/2 groups updated"),
        ),
        (lws(0, {}), ("Healthy", "0/0 groups ready")),
    ],
)
def test_leaderworkerset_health_follows_its_groups(
    version: str, obj: dict[str, Any], expected: tuple[str, str]
) -> None:
    hs = lws_health(obj, version)
    assert hs["status"] == expected[0]
    assert hs["message"].startswith(expected[1])


def test_configmap_patch_embeds_the_leaderworkerset_script_verbatim() -> None:
    patch = yaml.safe_load(CM_PATCH.read_text())
    assert patch["data"][LWS_KEY] == LWS_HEALTH_LUA.read_text()


@pytest.mark.parametrize("version", LUA_VERSIONS)
def test_a_group_waiting_on_a_pod_is_progressing_with_the_pod_named(version: str) -> None:
    message = (
        "0/1 replicas ready; group 0 (1/2 pods ready) waits on pod llama-405b-0-1 "
        "(worker 1): container mpi-worker ImagePullBackOff"
    )
    obj = md(
        conditions=[
            {
                "type": "Ready",
                "status": "False",
                "reason": "WaitingForReplicas",
                "message": message,
                "observedGeneration": 3,
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "WaitingForReplicas",
                "message": message,
                "observedGeneration": 3,
            },
            {
                "type": "Degraded",
                "status": "False",
                "reason": "AsExpected",
                "message": "",
                "observedGeneration": 3,
            },
        ]
    )
    hs = health(obj, version)
    assert hs["status"] == "Progressing"
    assert "waits on pod llama-405b-0-1 (worker 1)" in hs["message"]
