"""The extender end to end with the real kube-scheduler, on fake GPU nodes.

kube-scheduler runs with our extender (filter, prioritize, bind; nodeCacheCapable;
managedResources gpu.exo.dev/gpu ignored by the scheduler) and talks to it over mutual TLS, with
the client certificate the chart would give it; the
extender answers from a view fed by watches of the real API server; GPUDevice objects are
written as an exporter writes them (spec, then status through the status subresource).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from exo.gpu.devcluster import LocalCluster, wait_for
from exo.gpu.devcluster.cluster import (
    SCHEDULER_NAME,
    extender_entry,
    free_port,
    scheduler_tls_config,
)
from exo.gpu.devcluster.nodes import publish_device
from exo.gpu.devcluster.pki import ExtenderPki
from exo.gpu.extender.cli import serve
from exo.gpu.extender.server import ServingTLS

pytestmark = pytest.mark.cluster

GIB = 1024**3
GPU = "gpu.exo.dev/gpu"


class ExtenderThread:
    """``exo-gpu extender`` served from a thread of the test process, over mutual TLS."""

    def __init__(self, kubeconfig: str, port: int, pki: ExtenderPki) -> None:
        self.kubeconfig, self.port, self.pki = kubeconfig, port, pki
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> ExtenderThread:
        ready = threading.Event()

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            ready.set()
            tls = ServingTLS(str(self.pki.server_cert), str(self.pki.server_key),
                             str(self.pki.ca_cert))
            await serve(self.kubeconfig, "127.0.0.1", self.port, tls, self.stop_event,
                        scheduler_names=(SCHEDULER_NAME,))

        self.thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self.thread.start()
        ready.wait(10)
        wait_for(self._ready, timeout=30, what="the extender to be ready")
        return self

    def _ready(self) -> bool:
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        with urllib.request.urlopen(f"{self.url}/readyz", timeout=1,
                                    context=context) as response:
            return bool(response.status == 200)

    def stop(self) -> None:
        if self.loop and self.stop_event:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        if self.thread:
            self.thread.join(60)
            assert not self.thread.is_alive(), "the extender did not stop"


@pytest.fixture(scope="module")
def extender(kube_cluster: LocalCluster) -> Iterator[ExtenderThread]:
    pki = kube_cluster.extender_pki()
    running = ExtenderThread(kube_cluster.kubeconfig, free_port(), pki).start()
    kube_cluster.restart_scheduler([extender_entry(running.url, scheduler_tls_config(pki))])
    yield running
    kube_cluster.restart_scheduler([])
    running.stop()


@pytest.fixture
def devices(kube_cluster: LocalCluster) -> Iterator[Callable[..., str]]:
    api = kube_cluster.api_client()
    made: list[str] = []

    def make(node: str, index: int, **metrics: Any) -> str:
        name = publish_device(api, node, index, **metrics)
        made.append(name)
        return name

    yield make
    custom = client.CustomObjectsApi(api)
    for name in made:
        custom.delete_cluster_custom_object("gpu.exo.dev", "v1alpha1", "gpudevices", name)


def gpu_pod(name: str, min_memory: str | None) -> dict[str, Any]:
    annotations = {"gpu.exo.dev/min-memory": min_memory} if min_memory else {}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                                     "resources": {"limits": {GPU: "1"}}}]}}


def test_pod_lands_on_the_node_with_the_best_device(
        kube_cluster: LocalCluster, extender: ExtenderThread, namespace: str,
        gpu_nodes: Any, devices: Callable[..., str]) -> None:
    busy = gpu_nodes("busy", gpus=1).metadata.name
    hot = gpu_nodes("hot", gpus=1).metadata.name
    idle = gpu_nodes("idle", gpus=1).metadata.name
    devices(busy, 0, util=90, used=20 * GIB)
    devices(hot, 0, util=5, temp=86)
    best = devices(idle, 0, util=10)
    core = client.CoreV1Api(kube_cluster.api_client())
    core.create_namespaced_pod(namespace, gpu_pod("train", "8Gi"))

    def bound() -> bool:
        return bool(core.read_namespaced_pod("train", namespace).spec.node_name)

    wait_for(bound, timeout=60, what="the pod to be bound by the extender")
    placed = core.read_namespaced_pod("train", namespace)
    assert placed.spec.node_name == idle
    annotations = placed.metadata.annotations
    assert annotations["gpu.exo.dev/device"] == best
    assert annotations["gpu.exo.dev/device-uuid"].startswith("GPU-")
    assert annotations["gpu.exo.dev/reserved-memory"] == str(8 * GIB)


def test_pod_that_fits_nowhere_stays_pending_with_the_reason(
        kube_cluster: LocalCluster, extender: ExtenderThread, namespace: str,
        gpu_nodes: Any, devices: Callable[..., str]) -> None:
    small = gpu_nodes("small", gpus=1).metadata.name
    devices(small, 0, total=16 * GIB)
    core = client.CoreV1Api(kube_cluster.api_client())
    core.create_namespaced_pod(namespace, gpu_pod("huge", "64Gi"))

    def reason() -> str:
        events = core.list_namespaced_event(namespace,
                                            field_selector="involvedObject.name=huge").items
        return " ".join(e.message for e in events if e.reason == "FailedScheduling")

    wait_for(lambda: "TooSmall" in reason(), timeout=60,
             what="a FailedScheduling event carrying the extender's reason")
    assert "64.0 GiB requested" in reason()
    assert core.read_namespaced_pod("huge", namespace).spec.node_name is None


def test_racing_pods_never_overcommit_and_survive_an_extender_restart(
        kube_cluster: LocalCluster, extender: ExtenderThread, namespace: str,
        gpu_nodes: Any, devices: Callable[..., str]) -> None:
    """200 pods of 4 GiB race for 8 devices of 40 GiB (room for 80); the extender restarts
    half way. Afterwards no device holds more than it has, and exactly 80 pods are bound."""
    api = kube_cluster.api_client()
    core = client.CoreV1Api(api)
    names = {}
    for n in range(4):
        node = gpu_nodes(f"race{n}", gpus=2).metadata.name
        for i in range(2):
            names[devices(node, i)] = 40 * GIB

    def bound_pods() -> list[Any]:
        return [p for p in core.list_namespaced_pod(namespace).items if p.spec.node_name]

    for i in range(100):
        core.create_namespaced_pod(namespace, gpu_pod(f"race-{i:03d}", "4Gi"))
    wait_for(lambda: len(bound_pods()) >= 20, timeout=120, what="the first binds")

    # Restart: a new extender with a new view rebuilt from the API, on the same port.
    extender.stop()
    restarted = ExtenderThread(kube_cluster.kubeconfig, extender.port, extender.pki).start()
    extender.thread, extender.loop, extender.stop_event = \
        restarted.thread, restarted.loop, restarted.stop_event

    for i in range(100, 200):
        core.create_namespaced_pod(namespace, gpu_pod(f"race-{i:03d}", "4Gi"))
    wait_for(lambda: len(bound_pods()) >= 80, timeout=240, what="80 pods to be bound")

    held: dict[str, int] = {}
    for pod in bound_pods():
        annotations = pod.metadata.annotations
        device = annotations["gpu.exo.dev/device"]
        held[device] = held.get(device, 0) + int(annotations["gpu.exo.dev/reserved-memory"])
    assert set(held) <= set(names)
    for device, total in names.items():
        assert held.get(device, 0) <= total, f"{device} over-committed: {held[device]} > {total}"
    assert len(bound_pods()) == 80
