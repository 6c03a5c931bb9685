"""Plans and binds share one ledger, against the real control plane.

The controller and the scheduler extender run as ``exo-gpu controller`` runs them: one process,
one view (``exo.gpu.app.extender_sidecar`` over ``run_operator``), with the real kube-scheduler
configured with the extender. GPUDevices come from the simulated exporters of
``test_controller_integration``; pods are made Running by the local cluster's pod runner.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from test_controller_integration import (
    GROUP,
    POLICY,
    TEMPLATE,
    TEST_LABEL,
    VERSION,
    Exporters,
    custom,
    exporters,
    get_workload,
    owned_pods,
    run_id,
    wait_phase,
)

from exo.gpu.devcluster import LocalCluster, wait_for
from exo.gpu.devcluster.cluster import (
    extender_entry,
    scheduler_tls_config,
)
from exo.gpu.devcluster.composed import ControllerWithExtender

__all__ = ["exporters", "run_id"]  # fixtures shared with the controller's integration tests

pytestmark = pytest.mark.cluster

GIB = 1024**3


@pytest.fixture
def composed(kube_cluster: LocalCluster, namespace: str) -> Iterator[ControllerWithExtender]:
    running = ControllerWithExtender(kube_cluster, namespace, POLICY)
    kube_cluster.restart_scheduler([extender_entry(
        running.url, scheduler_tls_config(kube_cluster.extender_pki()))])
    try:
        yield running
    finally:
        kube_cluster.restart_scheduler([])
        running.close()


def workload(name: str, run: str, nodes: list[str], **spec: Any) -> dict[str, Any]:
    """A workload with a pod template, over the devices of ``nodes`` of this test."""
    spec.setdefault("template", TEMPLATE)
    spec["deviceSelector"] = {"matchLabels": {TEST_LABEL: run}, "matchExpressions": [
        {"key": "gpu.exo.dev/node", "operator": "In", "values": nodes}]}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
            "metadata": {"name": name}, "spec": spec}


def create_at_once(cluster: LocalCluster, namespace: str, bodies: list[dict[str, Any]]) -> None:
    api = custom(cluster)
    barrier = threading.Barrier(len(bodies))

    def create(body: dict[str, Any]) -> None:
        barrier.wait()
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", body)

    threads = [threading.Thread(target=create, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def placed_reason(obj: dict[str, Any]) -> tuple[str, str]:
    placed = next(c for c in obj["status"]["conditions"] if c["type"] == "Placed")
    return placed["status"], placed["reason"]


def bound(cluster: LocalCluster, namespace: str, name: str) -> list[Any]:
    return [p for p in owned_pods(cluster, namespace, name) if p.spec.node_name]


def test_two_workloads_racing_for_the_last_free_memory_of_a_device(
        kube_cluster: LocalCluster, namespace: str, run_id: str, gpu_nodes: Callable[..., Any],
        exporters: Exporters, composed: ControllerWithExtender) -> None:
    """A pod holds 40 GiB of the one device both may use, so 40 GiB are left; each workload
    wants 32 GiB. Exactly one is placed there and runs; the other is Unschedulable with the
    reason, and is placed as soon as the first is deleted."""
    node = gpu_nodes("race", vendor="nvidia", gpus=2).metadata.name
    small = gpu_nodes("small", vendor="nvidia", gpus=1).metadata.name
    target = exporters.add(node, "nvidia", 0, 80, capacity=400)
    exporters.add(small, "nvidia", 0, 24, capacity=100)  # too small for either
    core = client.CoreV1Api(kube_cluster.api_client())
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "holder", "annotations": {"gpu.exo.dev/min-memory": "40Gi"}},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {
            "limits": {"gpu.exo.dev/gpu": "1"}}}], "nodeSelector": {
            "kubernetes.io/hostname": node}}})
    wait_for(lambda: (core.read_namespaced_pod("holder", namespace).metadata.annotations or {})
             .get("gpu.exo.dev/device") == target, timeout=60, what="the holder pod's bind")
    bodies = [workload(name, run_id, [node, small], tasks=1, minMemoryBytes="32Gi")
              for name in ("left", "right")]
    create_at_once(kube_cluster, namespace, bodies)
    final = {name: wait_phase(kube_cluster, namespace, name, "Running", "Unschedulable",
                              timeout=60) for name in ("left", "right")}
    phases = sorted(obj["status"]["phase"] for obj in final.values())
    assert phases == ["Running", "Unschedulable"], final
    winner = next(n for n, obj in final.items() if obj["status"]["phase"] == "Running")
    loser = "right" if winner == "left" else "left"
    assert [p["device"] for p in final[winner]["status"]["placements"]] == [target]
    (pod,) = bound(kube_cluster, namespace, winner)
    assert pod.metadata.annotations["gpu.exo.dev/device"] == target
    assert pod.metadata.annotations["gpu.exo.dev/reserved-memory"] == str(32 * GIB)
    assert placed_reason(final[loser]) == ("False", "InsufficientMemory")
    assert "32Gi" in final[loser]["status"]["message"]
    assert not final[loser]["status"]["placements"]
    assert not owned_pods(kube_cluster, namespace, loser)
    # The winner's memory stays its own while it runs, through resyncs...
    wait_for(lambda: sum(c.reconciles for c in composed.controllers) > 6, timeout=30,
             what="a few resyncs")
    assert get_workload(kube_cluster, namespace, loser)["status"]["phase"] == "Unschedulable"
    # ...and is released with it: the other is placed, bound and runs there.
    custom(kube_cluster).delete_namespaced_custom_object(GROUP, VERSION, namespace,
                                                         "gpuworkloads", winner)
    after = wait_phase(kube_cluster, namespace, loser, "Running", timeout=60)
    assert [p["device"] for p in after["status"]["placements"]] == [target]
    (pod,) = bound(kube_cluster, namespace, loser)
    assert pod.metadata.annotations["gpu.exo.dev/device"] == target


def test_a_whole_device_workload_keeps_other_workloads_off_its_device(
        kube_cluster: LocalCluster, namespace: str, run_id: str, gpu_nodes: Callable[..., Any],
        exporters: Exporters, composed: ControllerWithExtender) -> None:
    """A GPUWorkload without minMemoryBytes takes its device whole at bind. Other workloads
    must not be planned there (their pods used to stay Pending for ever): they go to the device
    left, or are Unschedulable saying why."""
    first_node = gpu_nodes("whole-a", vendor="nvidia", gpus=1).metadata.name
    second_node = gpu_nodes("whole-b", vendor="nvidia", gpus=1).metadata.name
    device_a = exporters.add(first_node, "nvidia", 0, 80, capacity=400)
    device_b = exporters.add(second_node, "nvidia", 0, 80, capacity=400, util=50)
    api = custom(kube_cluster)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", workload(
        "whole", run_id, [first_node], tasks=1))
    wait_phase(kube_cluster, namespace, "whole", "Running", timeout=60)
    (pod,) = bound(kube_cluster, namespace, "whole")
    assert pod.metadata.annotations["gpu.exo.dev/reserved-memory"] == str(80 * GIB)
    # Device a scores better (idle) but is held whole: the next workload goes to b, and runs.
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", workload(
        "next", run_id, [first_node, second_node], tasks=1))
    placed = wait_phase(kube_cluster, namespace, "next", "Running", timeout=60)
    assert [p["device"] for p in placed["status"]["placements"]] == [device_b]
    # Two tasks on one device each: only b is left, and it is held by "next" now.
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", workload(
        "pair", run_id, [first_node, second_node], tasks=2, maxTasksPerDevice=1))
    pair = wait_phase(kube_cluster, namespace, "pair", "Unschedulable", timeout=30)
    assert placed_reason(pair) == ("False", "InsufficientMemory")
    assert "held by other pods or plans" in pair["status"]["message"]
    assert not owned_pods(kube_cluster, namespace, "pair")
    core = client.CoreV1Api(kube_cluster.api_client())
    pending = [p.metadata.name for p in core.list_namespaced_pod(namespace).items
               if not p.spec.node_name]
    assert pending == []
    # The view holds each device once, for its own workload.
    with composed.view.lock:
        assert composed.view.reserved_by_device.get(device_a) == 80 * GIB
        assert composed.view.reserved_by_device.get(device_b) == 80 * GIB
