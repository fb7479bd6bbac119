"""The operator's watch cache: what a reconcile reads instead of the API server."""

from __future__ import annotations

from typing import Any

from turnpike.controller.cache import Cache


def model(rv: str, name: str = "llama") -> dict[str, Any]:
    return {
        "apiVersion": "turnpike.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"namespace": "team-a", "name": name, "resourceVersion": rv},
    }


def child(kind: str, rv: str = "1", owner: str = "llama") -> dict[str, Any]:
    return {
        "apiVersion": {"Deployment": "apps/v1", "Service": "v1"}.get(kind, "policy/v1"),
        "kind": kind,
        "metadata": {
            "namespace": "team-a",
            "name": owner,
            "resourceVersion": rv,
            "ownerReferences": [{"kind": "ModelDeployment", "name": owner, "controller": True}],
        },
    }


def test_children_are_found_by_kind_and_name_until_deleted() -> None:
    cache = Cache()
    cache.child_seen("ADDED", child("Service"))
    cache.child_seen("ADDED", child("PodDisruptionBudget"))
    assert cache.child("Service", "team-a", "llama") == child("Service")
    assert cache.child("Deployment", "team-a", "llama") is None
    cache.child_seen("DELETED", child("Service"))
    assert cache.child("Service", "team-a", "llama") is None
    assert cache.child("PodDisruptionBudget", "team-a", "llama") is not None


def test_a_deployment_is_also_kept_by_owner_for_capacity_accounting() -> None:
    cache = Cache()
    cache.child_seen("MODIFIED", child("Deployment", rv="7"))
    assert cache.deployments[("team-a", "llama")]["metadata"]["resourceVersion"] == "7"
    cache.child_seen("DELETED", child("Deployment", rv="8"))
    assert ("team-a", "llama") not in cache.deployments


def test_a_late_apply_response_never_hides_a_newer_watch_event() -> None:
    """The apply's answer (rv 10) arrives after the watch showed kcm's status update (rv 12)."""
    cache = Cache()
    ready = child("Deployment", rv="12")
    ready["status"] = {"readyReplicas": 1}
    cache.child_seen("MODIFIED", ready)
    cache.deployment_seen("MODIFIED", child("Deployment", rv="10"))
    assert cache.deployments[("team-a", "llama")]["status"] == {"readyReplicas": 1}
    assert cache.child("Deployment", "team-a", "llama") == ready
    # A newer write goes through (the apply of a scale-up, before its watch event).
    cache.deployment_seen("MODIFIED", child("Deployment", rv="13"))
    assert cache.deployments[("team-a", "llama")]["metadata"]["resourceVersion"] == "13"


def test_only_the_exact_object_our_status_patch_returned_is_our_own_write() -> None:
    cache = Cache()
    assert not cache.is_own_write(model("5"))
    cache.status_written(("team-a", "llama"), model("5"))
    assert cache.is_own_write(model("5"))
    # Someone changed the object after our patch: that event must queue a reconcile.
    assert not cache.is_own_write(model("6"))
    assert not cache.is_own_write(model("5", name="other"))


def test_a_deleted_model_forgets_its_own_writes() -> None:
    cache = Cache()
    cache.status_written(("team-a", "llama"), model("5"))
    cache.model_seen("DELETED", model("5"))
    # Nothing is kept for an object that is gone (the map would grow with every delete).
    assert not cache.is_own_write(model("5"))


def test_cached_objects_do_not_keep_managed_fields() -> None:
    """managedFields are never read by the operator and are a large part of each
    object: at 5,000 ModelDeployments they decide whether the operator fits its memory."""
    cache = Cache()
    body = child("Deployment", rv="3")
    body["metadata"]["managedFields"] = [{"manager": "turnpike", "fieldsV1": {"f:spec": {}}}]
    cache.child_seen("ADDED", body)
    assert "managedFields" not in cache.child("Deployment", "team-a", "llama")["metadata"]  # type: ignore[index]
    assert "managedFields" not in cache.deployments[("team-a", "llama")]["metadata"]
    assert "managedFields" in body["metadata"]  # the caller's object is left alone
