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
