"""Fake GPU nodes: Node objects with capacity, allocatable and GPU labels, but no kubelet.

kube-scheduler reads a node's allocatable resources, labels, taints and ``spec.unschedulable``; it
does not need a kubelet to bind. The node carries ``devcluster.exo.dev/fake=true`` so that the pod
runner knows it plays the kubelet there.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from exo.gpu.k8s.view import GPU_RESOURCE

from .podrunner import FAKE_NODE_LABEL


def gpu_node(name: str, *, vendor: str | None = None, model: str | None = None, gpus: int = 0,
             cpu: str = "64", memory: str = "512Gi", pods: int = 110,
             labels: Mapping[str, str] | None = None,
             extended: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The manifest of a fake node holding ``gpus`` devices of ``vendor``/``model``."""
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                  FAKE_NODE_LABEL: "true"}
    if vendor:
        all_labels["gpu.exo.dev/vendor"] = vendor
    if model:
        all_labels["gpu.exo.dev/model"] = model.replace(" ", "-")[:63]
    all_labels.update(labels or {})
    resources: dict[str, str] = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
    for resource, amount in (extended or {}).items():
        resources[resource] = str(amount)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "spec": {},
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "FakeNodeReady",
                            "message": "fake node of the exo-gpu local cluster",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                         "kubeletVersion": "fake", "bootID": "", "containerRuntimeVersion": "",
                         "kernelVersion": "", "kubeProxyVersion": "", "machineID": "",
                         "osImage": "", "systemUUID": ""},
        },
    }


def create_gpu_node(api_client: Any, name: str, **options: Any) -> Any:
    """Create a fake GPU node (see ``gpu_node``) and make sure its status stuck."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    manifest = gpu_node(name, **options)
    node = core.create_node(manifest)
    # Status in a create body is kept for nodes today; patch it anyway in case it was dropped,
    # so the scheduler always sees the allocatable resources.
    if not (node.status and node.status.allocatable):
        node = core.patch_node_status(name, {"status": manifest["status"]})
    return node


def publish_device(api_client: Any, node: str, index: int, *, vendor: str = "nvidia",
                   total: int = 40 * 1024**3, used: int = 0, util: float = 0.0,
                   temp: float = 45.0) -> str:
    """Create a GPUDevice with fresh metrics, as the node's exporter would (spec, then status
    through the status subresource); returns its name."""
    import time
    import uuid

    from kubernetes import client

    from exo.gpu.k8s.models import (
        Condition,
        DeviceMetrics,
        GPUDevice,
        GPUDeviceStatus,
        to_time,
    )
    from exo.gpu.telemetry_protocol import GPUDeviceInfo, GPUMetrics, Vendor

    info = GPUDeviceInfo(device_id="x", vendor=Vendor(vendor), name="Sim GPU 40GB",
                         memory_total_bytes=total, uuid=f"GPU-{uuid.uuid4()}")
    obj = GPUDevice.from_info(info, node, index, 100.0)
    custom = client.CustomObjectsApi(api_client)
    created = custom.create_cluster_custom_object("gpu.exo.dev", "v1alpha1", "gpudevices",
                                                  obj.to_api())
    now = time.time()
    status = GPUDeviceStatus(
        metrics=DeviceMetrics.from_sample(GPUMetrics(
            device_id=obj.name, timestamp=now, memory_used_bytes=used, memory_total_bytes=total,
            compute_utilization_percent=util, power_watts=100.0, temperature_celsius=temp,
            clock_rate_mhz=1500)),
        last_heartbeat_time=to_time(now),
        conditions=[Condition(type="Ready", status="True", reason="Reporting", message="",
                              last_transition_time=to_time(now))])
    custom.patch_cluster_custom_object_status(
        "gpu.exo.dev", "v1alpha1", "gpudevices", obj.name,
        {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
         "status": status.to_api()})
    return str(obj.name)
