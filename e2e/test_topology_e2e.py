"""Device sets, affinity and network topology end to end, on fake nodes with simulated links.

The real control plane and kube-scheduler configured with the extender; the controller and the
extender in one process over one view (as ``exo-gpu controller`` runs them); the exporters are
the real agents with the simulated backend playing a fleet file with links, writing GPUDevice
status (links included) through the API server on the wall clock. Nodes carry rack labels where a
test needs them; every test selects only its own nodes' devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from exo.gpu.devcluster import LocalCluster, wait_for
from exo.gpu.devcluster.cluster import (
    extender_entry,
    scheduler_tls_config,
)
from exo.gpu.devcluster.composed import ControllerWithExtender
from exo.gpu.exporter.agent import AgentConfig, DeviceAgent, WritePolicy
from exo.gpu.exporter.backends import GuardedBackend
from exo.gpu.exporter.backends.simulated import SimulatedBackend
from exo.gpu.exporter.fleet import parse_fleet
from exo.gpu.exporter.kubeapi import GPUDeviceAPI, KubeConfig
from exo.gpu.exporter.metrics import ExporterMetrics
from exo.gpu.k8s.view import ClusterView
from exo.gpu.selector import SelectionPolicy

pytestmark = pytest.mark.cluster

GROUP, VERSION = "gpu.exo.dev", "v1alpha1"
GIB = 1024**3
RACK = "topology.exo.dev/rack"
#: Exporters write at least every 2 s here; a device is stale after 3 intervals of 5 s.
POLICY = SelectionPolicy(reporting_interval_seconds=5.0)
WRITES = WritePolicy(min_interval_s=1.0, heartbeat_s=2.0)
TEMPLATE = {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}


class Exporters:
    """One real agent per node of a fleet (simulated backend, wall clock), polled every second
    on a thread of their own."""

    def __init__(self, cluster: LocalCluster, fleet_data: dict[str, Any]) -> None:
        self.cluster = cluster
        self.fleet = parse_fleet(fleet_data)
        self.nodes = self.fleet.node_names()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()

    async def _main(self) -> None:
        start = time.time()
        apis, agents = [], []
        for node in self.nodes:
            api = GPUDeviceAPI(KubeConfig.load(self.cluster.kubeconfig))
            backend = GuardedBackend(SimulatedBackend(self.fleet, node, start=start), 5.0)
            apis.append(api)
            agents.append(DeviceAgent(AgentConfig(node=node, policy=WRITES,
                                                  rediscover_interval_s=5.0),
                                      backend, api, ExporterMetrics(node),
                                      rng=random.Random(node)))
        try:
            while not self.stop.is_set():
                await asyncio.gather(*(agent.poll_once() for agent in agents))
                await asyncio.sleep(1.0)
        except BaseException as error:
            self.error = error
        finally:
            for agent, api in zip(agents, apis, strict=True):
                await api.close()
                await agent.aclose()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        for node in self.nodes:
            self.cluster.kubectl("delete", "gpudevices", "-l", f"gpu.exo.dev/node={node}",
                                 "--wait=false", check=False)
        assert self.error is None, self.error


@pytest.fixture
def stack(kube_cluster: LocalCluster, namespace: str) -> Iterator[ControllerWithExtender]:
    running = ControllerWithExtender(kube_cluster, namespace, POLICY)
    kube_cluster.restart_scheduler([extender_entry(
        running.url, scheduler_tls_config(kube_cluster.extender_pki()))])
    try:
        yield running
    finally:
        kube_cluster.restart_scheduler([])
        running.close()


@pytest.fixture
def fleet(kube_cluster: LocalCluster) -> Iterator[Callable[[dict[str, Any]], Exporters]]:
    started: list[Exporters] = []

    def start(data: dict[str, Any]) -> Exporters:
        exporters = Exporters(kube_cluster, data)
        started.append(exporters)
        return exporters

    yield start
    for exporters in started:
        exporters.close()


def gpus(count: int, *, busy: set[int] = frozenset(), model: str = "NVIDIA A100 80GB PCIe",  # type: ignore[assignment]
         numa: Callable[[int], int] = lambda i: 0) -> list[dict[str, Any]]:
    return [{"vendor": "nvidia", "model": model, "memory": "80Gi", "numaNode": numa(i),
             "utilization": {"pattern": "constant", "value": 40 if i in busy else 0}}
            for i in range(count)]


def nvlink_pairs(count: int) -> list[dict[str, Any]]:
    return [{"devices": [i, i + 1], "type": "NVLink", "count": 4, "level": "SingleSwitch"}
            for i in range(0, count, 2)]


def wait_reporting(view: ClusterView, devices: list[str], linked: bool = True) -> None:
    """Until the view has every device with a sample (and, with ``linked``, its links)."""

    def ready() -> bool:
        with view.lock:
            states = [view.state.device(d) for d in devices]
            if any(s is None or s.metrics is None for s in states):
                return False
            return not linked or all(view.state.links(d) is not None for d in devices)

    wait_for(ready, timeout=90, what=f"{len(devices)} devices reporting with their links")


def gpu_pod(name: str, node: str, count: int, annotations: dict[str, str] | None = None
            ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "containers": [{
                "name": "main", "image": "busybox",
                "resources": {"limits": {"gpu.exo.dev/gpu": str(count)}}}]}}


def bound_device(core: Any, namespace: str, name: str) -> list[str]:
    wait_for(lambda: bool(core.read_namespaced_pod(name, namespace).spec.node_name),
             timeout=90, what=f"pod {name} to be bound")
    annotations = core.read_namespaced_pod(name, namespace).metadata.annotations
    return annotations["gpu.exo.dev/device"].split(",")


def test_a_two_gpu_pod_on_a_node_with_a_free_nvlink_pair_gets_that_pair(
        kube_cluster: LocalCluster, namespace: str, gpu_nodes: Any, stack: ControllerWithExtender,
        fleet: Callable[[dict[str, Any]], Exporters]) -> None:
    node = gpu_nodes("pair", gpus=4).metadata.name
    # 0 and 1 are idle but on two NUMA nodes (PCIe System); 2 and 3 are busier, NVLinked.
    fleet({"nodes": [{"name": node, "devices": gpus(4, busy={2, 3}, numa=lambda i: i % 2 if
                                                    i < 2 else 0),
                      "links": [{"devices": [2, 3], "type": "NVLink", "count": 4,
                                 "level": "SingleSwitch"}]}]})
    names = [f"{node}-nvidia-{i}" for i in range(4)]
    wait_reporting(stack.view, names)
    core = client.CoreV1Api(kube_cluster.api_client())
    core.create_namespaced_pod(namespace, gpu_pod("tp2", node, 2))
    assert sorted(bound_device(core, namespace, "tp2")) == names[2:]
    links = core.read_namespaced_pod("tp2", namespace).metadata.annotations[
        "gpu.exo.dev/device-links"]
    assert "NVLink x4 (SingleSwitch) = 450" in links
    with stack.view.lock:  # by score alone the idle pair would have been taken
        order = [d.device_id for d in stack.view.state.node_devices(node)]
    assert set(order[:2]) == set(names[:2])


def test_four_one_gpu_pods_on_an_eight_gpu_nvlink_node_leave_two_whole_pairs(
        kube_cluster: LocalCluster, namespace: str, gpu_nodes: Any, stack: ControllerWithExtender,
        fleet: Callable[[dict[str, Any]], Exporters]) -> None:
    node = gpu_nodes("nv8", gpus=8).metadata.name
    # Partners are busier: by score alone the four pods would take 0, 2, 4, 6 and break all.
    fleet({"nodes": [{"name": node, "devices": gpus(8, busy={1, 3, 5, 7}),
                      "links": nvlink_pairs(8)}]})
    names = [f"{node}-nvidia-{i}" for i in range(8)]
    wait_reporting(stack.view, names)
    core = client.CoreV1Api(kube_cluster.api_client())
    for k in range(4):
        core.create_namespaced_pod(namespace, gpu_pod(f"one-{k}", node, 1))
    used = {d for k in range(4) for d in bound_device(core, namespace, f"one-{k}")}
    assert len(used) == 4
    free = {int(n.rsplit("-", 1)[1]) for n in names if n not in used}
    whole = {p for p in range(4) if {2 * p, 2 * p + 1} <= free}
    assert len(whole) == 2, f"free devices {sorted(free)} hold {len(whole)} whole pair(s)"


def test_an_eight_task_workload_packed_within_a_rack_lands_in_one_rack_while_another_is_emptier(
        kube_cluster: LocalCluster, namespace: str, gpu_nodes: Any, stack: ControllerWithExtender,
        fleet: Callable[[dict[str, Any]], Exporters]) -> None:
    racks = {"a1": ("rack-a", 8), "a2": ("rack-a", 8), "b1": ("rack-b", 8), "b2": ("rack-b", 2)}
    nodes = {short: gpu_nodes(short, gpus=count, labels={RACK: rack}).metadata.name
             for short, (rack, count) in racks.items()}
    busy = set(range(8))
    fleet({"nodes": [{"name": nodes[short],
                      "devices": gpus(count, busy=busy if rack == "rack-b" else set())}
                     for short, (rack, count) in racks.items()]})
    devices = [f"{nodes[s]}-nvidia-{i}" for s, (_, count) in racks.items() for i in range(count)]
    wait_reporting(stack.view, devices, linked=False)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
            "metadata": {"name": "packed"},
            "spec": {"tasks": 8, "maxTasksPerDevice": 1, "minMemoryBytes": "8Gi",
                     "template": TEMPLATE, "topology": {"packWithin": "rack", "required": True},
                     "deviceSelector": {"matchExpressions": [{
                         "key": "gpu.exo.dev/node", "operator": "In",
                         "values": sorted(nodes.values())}]}}}
    custom = client.CustomObjectsApi(kube_cluster.api_client())
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", body)
    obj = wait_workload(custom, namespace, "packed", "Running")
    placements = obj["status"]["placements"]
    assert len(placements) == 8
    assert {p["domain"] for p in placements} == {"rack=rack-b"}
    core = client.CoreV1Api(kube_cluster.api_client())
    pods = core.list_namespaced_pod(namespace, label_selector="gpu.exo.dev/workload=packed")
    bound = {p.spec.node_name for p in pods.items}
    assert bound <= {nodes["b1"], nodes["b2"]} and len(pods.items) == 8
    # rack-a stays the emptier: all 16 of its devices are free, rack-b has 2 left.
    with stack.view.lock:
        free = {rack: sum(1 for s, (r, _) in racks.items() if r == rack
                          for d in stack.view.state.node_devices(nodes[s]) if not d.reserved)
                for rack in ("rack-a", "rack-b")}
    assert free == {"rack-a": 16, "rack-b": 2}


def wait_workload(custom: Any, namespace: str, name: str, *phases: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                        "gpuworkloads", name))
        return (seen.get("status") or {}).get("phase") in phases

    wait_for(reached, timeout=90, what=f"{name} to reach {'/'.join(phases)}")
    return seen


def test_required_affinity_that_nothing_satisfies_is_unschedulable_with_the_reason(
        kube_cluster: LocalCluster, namespace: str, gpu_nodes: Any, stack: ControllerWithExtender,
        fleet: Callable[[dict[str, Any]], Exporters]) -> None:
    node = gpu_nodes("aff", gpus=2).metadata.name
    fleet({"nodes": [{"name": node, "devices": gpus(2, model="NVIDIA H100 80GB HBM3")}]})
    wait_reporting(stack.view, [f"{node}-nvidia-{i}" for i in range(2)], linked=False)
    custom = client.CustomObjectsApi(kube_cluster.api_client())
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload", "metadata": {"name": "b200"},
        "spec": {"tasks": 1, "template": TEMPLATE,
                 "deviceSelector": {"matchLabels": {"gpu.exo.dev/node": node}},
                 "affinity": {"required": {"models": ["NVIDIA B200"]}}}})
    obj = wait_workload(custom, namespace, "b200", "Unschedulable")
    placed = next(c for c in obj["status"]["conditions"] if c["type"] == "Placed")
    assert (placed["status"], placed["reason"]) == ("False", "AffinityUnsatisfied")
    assert "spec.affinity.required (model in (NVIDIA B200))" in placed["message"]
    # A pod asking the same of the extender stays Pending, and kube-scheduler says why.
    core = client.CoreV1Api(kube_cluster.api_client())
    core.create_namespaced_pod(namespace, gpu_pod("b200-pod", node, 1, {
        "gpu.exo.dev/device-affinity": '{"required": {"models": ["NVIDIA B200"]}}'}))

    def reason() -> str:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=b200-pod").items
        return " ".join(e.message for e in events if e.reason == "FailedScheduling")

    wait_for(lambda: "SelectorMismatch" in reason(), timeout=60,
             what="a FailedScheduling event with the extender's reason")
    assert "model in (NVIDIA B200)" in reason()
    assert core.read_namespaced_pod("b200-pod", namespace).spec.node_name is None


def test_devices_per_task_above_the_largest_node_is_unschedulable_naming_the_field(
        kube_cluster: LocalCluster, namespace: str, gpu_nodes: Any, stack: ControllerWithExtender,
        fleet: Callable[[dict[str, Any]], Exporters]) -> None:
    node = gpu_nodes("big", gpus=8).metadata.name
    fleet({"nodes": [{"name": node, "devices": gpus(8), "links": nvlink_pairs(8)}]})
    wait_reporting(stack.view, [f"{node}-nvidia-{i}" for i in range(8)])
    custom = client.CustomObjectsApi(kube_cluster.api_client())
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload", "metadata": {"name": "huge"},
        "spec": {"tasks": 1, "devicesPerTask": 32, "template": TEMPLATE}})
    obj = wait_workload(custom, namespace, "huge", "Unschedulable")
    placed = next(c for c in obj["status"]["conditions"] if c["type"] == "Placed")
    assert placed["reason"] == "SetTooLarge"
    assert "spec.devicesPerTask 32" in placed["message"]


@pytest.mark.parametrize(("spec", "field"), [
    ({"tasks": 2, "devicesPerTask": 2, "strategy": "capacity"}, "spec.devicesPerTask"),
    ({"tasks": 2, "devicesPerTask": 2, "maxTasksPerDevice": 2}, "spec.devicesPerTask"),
    ({"tasks": 2, "devicesPerTask": 100}, "spec.devicesPerTask"),
    ({"tasks": 2, "topology": {"packWithin": "shelf"}}, "spec.topology.packWithin"),
    ({"tasks": 2, "topology": {"packWithin": "rack"},
      "affinity": {"tasks": {"keep": "Apart", "by": "rack"}}}, "spec.affinity.tasks"),
    ({"tasks": 2, "topology": {"packWithin": "rack"},
      "affinity": {"tasks": {"keep": "Together"}}}, "spec.affinity.tasks"),
    ({"tasks": 2, "deviceSelector": {"matchLabels": {"gpu.exo.dev/vendor": "amd"}},
      "affinity": {"required": {"vendors": ["nvidia"]}}}, "spec.affinity.required.vendors"),
    ({"tasks": 2, "affinity": {"required": {"vendors": ["amd"], "labels": {
        "matchLabels": {"gpu.exo.dev/vendor": "nvidia"}}}}}, "spec.affinity.required"),
    ({"tasks": 2, "affinity": {"preferred": [{"weight": 101, "models": ["x"]}]}},
     "spec.affinity.preferred[0].weight"),
])
def test_the_api_server_refuses_bad_placement_rules_naming_the_field(
        kube_cluster: LocalCluster, namespace: str, spec: dict[str, Any], field: str) -> None:
    custom = client.CustomObjectsApi(kube_cluster.api_client())
    with pytest.raises(ApiException) as caught:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "gpuworkloads", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUWorkload",
            "metadata": {"name": "bad"}, "spec": spec})
    assert caught.value.status == 422
    assert field in caught.value.body, caught.value.body


def test_the_api_server_refuses_a_fabric_link_without_links(kube_cluster: LocalCluster) -> None:
    custom = client.CustomObjectsApi(kube_cluster.api_client())
    name = f"links-{random.randrange(10**6)}"
    custom.create_cluster_custom_object(GROUP, VERSION, "gpudevices", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUDevice", "metadata": {"name": name},
        "spec": {"node": "n", "vendor": "nvidia", "index": 0, "model": "m",
                 "memoryTotalBytes": GIB, "computeCapacity": 1.0}})
    try:
        with pytest.raises(ApiException) as caught:
            custom.patch_cluster_custom_object_status(GROUP, VERSION, "gpudevices", name, {
                "status": {"topology": {"peers": [{"device": "n-nvidia-1", "link": "NVLink"}]}}})
        assert caught.value.status == 422
        assert "status.topology.peers[0]" in caught.value.body
        assert "links counts the fabric links" in caught.value.body
    finally:
        with contextlib.suppress(ApiException):
            custom.delete_cluster_custom_object(GROUP, VERSION, "gpudevices", name)
