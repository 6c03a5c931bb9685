"""The chart's uninstall cleanup: a post-delete Job with its own rights, and what it removes.

``helm uninstall`` deletes the chart's objects; the components' own objects (the GPUDevices the
exporters wrote, the controller's and the second scheduler's Leases) are removed by the
``exo-gpu cleanup`` Job the chart runs as a post-delete hook. The real removal is exercised on a
real node by ``e2e/test_installed.py``; here: what the hook renders, and which devices count as
written by an exporter.
"""

from __future__ import annotations

from typing import Any

import pytest

from exo.gpu.uninstall import written_by_exporter
from test_chart import find, pod_specs, render

HOOK = {"helm.sh/hook": "post-delete",
        "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded,hook-failed"}


def _hook_docs(*sets: str) -> list[dict[str, Any]]:
    return [d for d in render(*sets) if d["metadata"]["name"] == "exo-gpu-cleanup"]


def test_cleanup_is_a_post_delete_hook_with_its_own_account() -> None:
    docs = _hook_docs()
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                         "Role", "RoleBinding", "Job"}
    for doc in docs:
        annotations = doc["metadata"]["annotations"]
        assert {k: annotations[k] for k in HOOK} == HOOK, doc["kind"]
    # The account and its rights exist before the Job starts.
    weights = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in docs}
    assert all(weights[kind] < weights["Job"] for kind in weights if kind != "Job")
    (job,) = [spec for where, spec in pod_specs(docs) if where == "Job/exo-gpu-cleanup"]
    assert job["serviceAccountName"] == "exo-gpu-cleanup"


def test_cleanup_may_list_and_delete_devices_and_only_the_releases_leases() -> None:
    docs = _hook_docs()
    cluster = find(docs, "ClusterRole")["rules"]
    assert cluster == [{"apiGroups": ["gpu.exo.dev"], "resources": ["gpudevices"],
                        "verbs": ["list", "delete"]}]
    rules = find(docs, "Role")["rules"]
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]} in rules
    (leases,) = [r for r in rules if r["resources"] == ["leases"]]
    assert leases["verbs"] == ["delete"]
    assert leases["resourceNames"] == ["exo-gpu-controller", "exo-gpu-scheduler"]
    args = find(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["cleanup", "--namespace=exo-gpu-system", "--instance=exo-gpu", "--wait=45",
                    "--lease=exo-gpu-controller", "--lease=exo-gpu-scheduler"]
    # The Job gives up before Helm's default 5 min, after the pods' 30 s grace period.
    spec = find(docs, "Job")["spec"]
    assert 45 < spec["activeDeadlineSeconds"] < 300


def test_cleanup_names_only_leases_that_exist() -> None:
    docs = _hook_docs("controller.leaderElection=false", "scheduler.enabled=false",
                      "networkPolicy.enabled=false")
    assert not [r for r in find(docs, "Role")["rules"] if r["resources"] == ["leases"]]
    args = find(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--lease")]


@pytest.mark.parametrize("setting", ["uninstallCleanup.enabled=false", "rbac.create=false"])
def test_cleanup_can_be_left_out(setting: str) -> None:
    assert _hook_docs(setting) == []


def _device(*entries: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"managedFields": [
        {"manager": manager, "operation": "Update", "fieldsV1": fields}
        for manager, fields in entries]}}


@pytest.mark.parametrize(("device", "expected"), [
    # The exporter created it (spec and labels): removed.
    (_device(("exo-gpu-exporter", {"f:metadata": {}, "f:spec": {"f:node": {}}})), True),
    # Registered by hand, with the controller writing its score: kept.
    (_device(("kubectl-client-side-apply", {"f:spec": {}}),
             ("exo-gpu-controller", {"f:status": {"f:score": {}}})), False),
    # An exporter only fed its status (a device registered by hand on an exporter's node): kept.
    (_device(("kubectl-create", {"f:spec": {}}), ("exo-gpu-exporter", {"f:status": {}})), False),
    ({"metadata": {}}, False),
])
def test_written_by_exporter(device: dict[str, Any], expected: bool) -> None:
    assert written_by_exporter(device) is expected
