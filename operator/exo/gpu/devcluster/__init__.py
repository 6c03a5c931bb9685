"""A local Kubernetes control plane for tests and the demo, run from real binaries.

``LocalCluster`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a pod
runner on free loopback ports; ``ensure_binaries`` builds or reuses the cached binaries;
``gpu_node`` describes a fake GPU node. The pytest fixtures live in ``pytest_plugin``.
"""

from .binaries import Binaries, cache_root, ensure_binaries, ensure_helm
from .cluster import LocalCluster, stop_detached, wait_for
from .nodes import create_gpu_node, gpu_node

__all__ = [
    "Binaries",
    "LocalCluster",
    "cache_root",
    "create_gpu_node",
    "ensure_binaries",
    "ensure_helm",
    "gpu_node",
    "stop_detached",
    "wait_for",
]
