"""exo-gpu's preemption against the real API server, kube-scheduler, disruption controller and
``exo-gpu extender`` process (issue 14, item 5).

- a higher-priority pod that fits only if a lower-priority GPU pod leaves evicts it (the Eviction
  API) and is bound to the freed device; a lower-priority pod on a node where its eviction would
  not free enough memory is left alone;
- a pod whose victims would not free enough memory preempts nothing (an Event says so);
- a victim protected by a PodDisruptionBudget is not evicted: the refusal is an Event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from extender_process import ExtenderProcess, create, devices, events, extender
from kubernetes import client

from exo.gpu.devcluster import LocalCluster, wait_for

pytestmark = pytest.mark.cluster
__all__ = ["devices", "extender"]  # fixtures

GIB = 1024**3


@pytest.fixture(scope="module")
def priorities(kube_cluster: LocalCluster) -> Iterator[dict[str, str]]:
    """PriorityClasses "low" (100) and "high" (1000), by role."""
    suffix = uuid.uuid4().hex[:6]
    names = {"low": f"exo-low-{suffix}", "high": f"exo-high-{suffix}"}
    scheduling = client.SchedulingV1Api(kube_cluster.api_client())
    for role, value in (("low", 100), ("high", 1000)):
        scheduling.create_priority_class({"apiVersion": "scheduling.k8s.io/v1",
                                          "kind": "PriorityClass",
                                          "metadata": {"name": names[role]}, "value": value})
    yield names
    for name in names.values():
        scheduling.delete_priority_class(name)


def gpu_pod(name: str, memory: str, priority_class: str, node: str,
            labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {},
                         "annotations": {"gpu.exo.dev/min-memory": memory}},
            "spec": {"priorityClassName": priority_class, "terminationGracePeriodSeconds": 0,
                     "nodeSelector": {"kubernetes.io/hostname": node},
                     "containers": [{"name": "main", "image": "busybox", "resources": {
                         "limits": {"gpu.exo.dev/gpu": "1"}}}]}}


def running(core: Any, namespace: str, name: str) -> bool:
    pod = core.read_namespaced_pod(name, namespace)
    return bool(pod.status.phase == "Running" and pod.metadata.deletion_timestamp is None)


def gone(core: Any, namespace: str, name: str) -> bool:
    return name not in [p.metadata.name for p in core.list_namespaced_pod(namespace).items]


def test_a_higher_priority_pod_evicts_the_lower_one_and_takes_its_device(
        kube_cluster: LocalCluster, extender: ExtenderProcess, namespace: str, gpu_nodes: Any,
        devices: Callable[..., str], priorities: dict[str, str]) -> None:
    core = client.CoreV1Api(kube_cluster.api_client())
    freeable = gpu_nodes("pre-a", gpus=1).metadata.name
    crowded = gpu_nodes("pre-b", gpus=1).metadata.name
    device = devices(freeable, 0, total=40 * GIB)
    devices(crowded, 0, total=40 * GIB, used=25 * GIB)  # 25 GiB in use by processes we see
    create(kube_cluster, namespace, gpu_pod("low-a", "30Gi", priorities["low"], freeable))
    create(kube_cluster, namespace, gpu_pod("low-b", "10Gi", priorities["low"], crowded))
    for name in ("low-a", "low-b"):
        wait_for(lambda name=name: running(core, namespace, name), timeout=60,
                 what=f"{name} running")

    high = gpu_pod("high", "30Gi", priorities["high"], freeable)
    del high["spec"]["nodeSelector"]  # either node: only the freeable one can make room
    create(kube_cluster, namespace, high)
    wait_for(lambda: core.read_namespaced_pod("high", namespace).spec.node_name == freeable,
             timeout=120, what="the high-priority pod bound to the freed device")
    placed = core.read_namespaced_pod("high", namespace)
    assert placed.metadata.annotations["gpu.exo.dev/device"] == device
    assert gone(core, namespace, "low-a")
    assert running(core, namespace, "low-b")  # evicting it would free 10 GiB of 15: useless
    preempted = events(core, namespace, "low-a", "Preempted")
    assert preempted and f"for {namespace}/high (priority 1000)" in preempted[0]
    preempting = events(core, namespace, "high", "Preempting")
    assert preempting and f"evicting {namespace}/low-a on {freeable}" in preempting[0]


def test_victims_that_free_too_little_are_not_evicted(
        kube_cluster: LocalCluster, extender: ExtenderProcess, namespace: str, gpu_nodes: Any,
        devices: Callable[..., str], priorities: dict[str, str]) -> None:
    core = client.CoreV1Api(kube_cluster.api_client())
    node = gpu_nodes("useless", gpus=1).metadata.name
    devices(node, 0, total=40 * GIB, used=25 * GIB)
    create(kube_cluster, namespace, gpu_pod("low", "10Gi", priorities["low"], node))
    wait_for(lambda: running(core, namespace, "low"), timeout=60, what="the low pod running")
    create(kube_cluster, namespace, gpu_pod("high", "30Gi", priorities["high"], node))
    wait_for(lambda: bool(events(core, namespace, "high", "PreemptionNotHelpful")), timeout=60,
             what="the Event saying preemption would not help")
    message = events(core, namespace, "high", "PreemptionNotHelpful")[0]
    assert "would not free enough memory on 1 node" in message
    assert running(core, namespace, "low")
    assert core.read_namespaced_pod("high", namespace).spec.node_name is None


def test_a_disruption_budget_refusal_is_an_event_not_a_delete(
        kube_cluster: LocalCluster, extender: ExtenderProcess, namespace: str, gpu_nodes: Any,
        devices: Callable[..., str], priorities: dict[str, str]) -> None:
    api = kube_cluster.api_client()
    core = client.CoreV1Api(api)
    node = gpu_nodes("guarded", gpus=1).metadata.name
    devices(node, 0, total=40 * GIB)
    client.PolicyV1Api(api).create_namespaced_pod_disruption_budget(namespace, {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "keep"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}})
    create(kube_cluster, namespace, gpu_pod("low", "30Gi", priorities["low"], node,
                                            labels={"app": "guarded"}))
    wait_for(lambda: running(core, namespace, "low"), timeout=60, what="the low pod running")
    wait_for(lambda: client.PolicyV1Api(api).read_namespaced_pod_disruption_budget(
        "keep", namespace).status.current_healthy == 1, timeout=60,
        what="the disruption controller counting the guarded pod")
    create(kube_cluster, namespace, gpu_pod("high", "30Gi", priorities["high"], node))
    wait_for(lambda: bool(events(core, namespace, "high", "PreemptionBlocked")), timeout=90,
             what="the Event saying the budget refused the eviction")
    message = events(core, namespace, "high", "PreemptionBlocked")[0]
    assert f"evicting {namespace}/low would be refused" in message
    assert "disruption budget" in message
    assert running(core, namespace, "low")
    assert core.read_namespaced_pod("high", namespace).spec.node_name is None
