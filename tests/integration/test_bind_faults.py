"""Binds are exact and admitted, against the real API server and kube-scheduler.

The faults of issue 12's row "lost bind answer; extender SIGKILL during 500 binds; Terminating
holders" (0 over-committed devices at any sample) and issue 14's bind refusals:

- a Binding the API server applied whose answer is lost: the client the extender binds through
  carries the Binding to the API server and then reports the connection lost
  (:class:`LosingClient`, the only fault injected in-process);
- the extender process killed with SIGKILL, three times, while kube-scheduler binds pods racing
  for too little memory (100 pods in ``make test``; the issue's 500 in ``make chaos``);
- a bound pod kept Terminating by a finalizer while another pod wants its memory;
- ``/bind`` called directly, with kube-scheduler's client certificate, for a pod of another
  scheduler and for a pod the extender never filtered.

A sampler lists the pods every quarter second throughout and adds up, per device, the memory the
bound pods' annotations reserve (Terminating pods included): no sample may exceed a device.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from extender_process import ExtenderProcess, create, devices, events, extender
from kubernetes import client

from exo.gpu.devcluster import LocalCluster, wait_for
from exo.gpu.devcluster.cluster import (
    SCHEDULER_NAME,
    extender_entry,
    free_port,
    scheduler_tls_config,
)
from exo.gpu.k8s.aioclient import ApiError

__all__ = ["devices", "extender"]  # fixtures

pytestmark = pytest.mark.cluster

GIB = 1024**3
GPU = "gpu.exo.dev/gpu"
HOLD = "test.exo.dev/hold"


def gpu_pod(name: str, memory: str, **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {"gpu.exo.dev/min-memory": memory},
                         **metadata},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "main", "image": "busybox",
                                     "resources": {"limits": {GPU: "1"}}}]}}


class Sampler:
    """Adds up, every quarter second, what the bound pods of ``namespace`` reserve per device."""

    def __init__(self, cluster: LocalCluster, namespace: str, totals: dict[str, int]) -> None:
        self.core = client.CoreV1Api(cluster.api_client())
        self.namespace, self.totals = namespace, totals
        self.samples, self.over = 0, []  # type: ignore[var-annotated]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.thread.join(10)

    def held(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for pod in self.core.list_namespaced_pod(self.namespace).items:
            annotations = pod.metadata.annotations or {}
            if not pod.spec.node_name or pod.status.phase in ("Succeeded", "Failed"):
                continue
            for name in annotations.get("gpu.exo.dev/device", "").split(","):
                if name:
                    held[name] = held.get(name, 0) + \
                        int(annotations["gpu.exo.dev/reserved-memory"])
        return held

    def _run(self) -> None:
        while not self.stop.wait(0.25):
            held = self.held()
            self.samples += 1
            self.over += [f"{d}: {b} > {self.totals.get(d, 0)}" for d, b in held.items()
                          if b > self.totals.get(d, 0)]

    def assert_never_over(self) -> None:
        assert self.samples > 0
        assert not self.over, f"over-committed in {len(self.over)} samples: {self.over[:5]}"


def bound(core: Any, namespace: str) -> list[str]:
    return [p.metadata.name for p in core.list_namespaced_pod(namespace).items
            if p.spec.node_name]


# ====================================================================== issue 14: admission
def test_bind_refuses_a_pod_of_another_scheduler_and_one_never_filtered(
        kube_cluster: LocalCluster, extender: ExtenderProcess, namespace: str,
        gpu_nodes: Any, devices: Callable[..., str]) -> None:
    node = gpu_nodes("admit", gpus=1).metadata.name
    devices(node, 0)
    core = client.CoreV1Api(kube_cluster.api_client())
    other = gpu_pod("other", "8Gi")
    other["spec"]["schedulerName"] = "other-scheduler"
    # Ours, but no node passes kube-scheduler's own filters: the extender is never asked.
    unfiltered = gpu_pod("unfiltered", "8Gi")
    unfiltered["spec"]["nodeSelector"] = {"test.exo.dev/nowhere": "true"}
    other, unfiltered = (create(kube_cluster, namespace, p) for p in (other, unfiltered))
    wait_for(lambda: bool(events(core, namespace, "unfiltered", "FailedScheduling")), timeout=60,
             what="kube-scheduler to find no node for the unfiltered pod")

    refused = extender.bind(other, node)
    assert f"pod {namespace}/other is scheduled by 'other-scheduler', not by " \
           f"{SCHEDULER_NAME} (--scheduler-name)" in refused
    refused = extender.bind(unfiltered, node)
    assert f"pod {namespace}/unfiltered was never filtered by this extender" in refused
    for name in ("other", "unfiltered"):
        pod = core.read_namespaced_pod(name, namespace)
        assert pod.spec.node_name is None and "gpu.exo.dev/device" not in \
            (pod.metadata.annotations or {})


# ================================================================ issue 12 item 8: exact binds
class LosingClient:
    """The extender's API client, losing the answer of the Bindings it is told to: the Binding
    reaches the API server, the answer does not reach the extender."""

    def __init__(self, inner: Any, lose: Callable[[str], bool]) -> None:
        self.inner, self.lose, self.lost = inner, lose, []  # type: ignore[var-annotated]

    async def request(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        answer = await self.inner.request(method, path, body, **options)
        if method == "POST" and path.endswith("/binding") and self.lose(path):
            self.lost.append(path)
            raise ApiError(0, "ServerDisconnected", f"POST {path}: the connection closed "
                                                    "before the answer")
        return answer

    async def close(self) -> None:
        await self.inner.close()


class LosingExtender:
    """``exo-gpu extender``'s parts, served from a thread, binding through a :class:`LosingClient`
    that loses the answers to Bindings of pods named ``lost-*``."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster, self.port = cluster, free_port()
        self.pki = cluster.extender_pki()
        self.client: LosingClient | None = None
        self.view: Any = None
        self.before: list[Any] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        from exo.gpu.extender.bind import Binder
        from exo.gpu.extender.cli import bind_client
        from exo.gpu.extender.server import ExtenderServer, ServingTLS, start_site
        from exo.gpu.k8s.informer import Informer
        from exo.gpu.k8s.view import ClusterView

        self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        view = self.view = ClusterView()
        informer = Informer(view, self.cluster.api_client()).start()
        self.client = LosingClient(bind_client(self.cluster.kubeconfig),
                                   lambda path: "/pods/lost-" in path)
        binder = Binder(view, self.client)  # type: ignore[arg-type]
        server = ExtenderServer(view, binder, ready=informer.synced.is_set,
                                scheduler_names=(SCHEDULER_NAME,))
        tls = ServingTLS(str(self.pki.server_cert), str(self.pki.server_key),
                         str(self.pki.ca_cert))
        runner = await start_site(server.app(), "127.0.0.1", self.port, tls)
        try:
            await self.stopping.wait()
        finally:
            informer.stop()
            await runner.cleanup()
            await binder.close()

    def __enter__(self) -> LosingExtender:
        self.thread.start()
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))

        def ready() -> bool:
            url = f"https://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=2, context=context) as reply:
                return bool(reply.status == 200)

        wait_for(ready, timeout=60, what="the extender to be ready")
        self.before = list(self.cluster.extenders)
        self.cluster.restart_scheduler([extender_entry(f"https://127.0.0.1:{self.port}",
                                                       scheduler_tls_config(self.pki))])
        return self

    def __exit__(self, *_: Any) -> None:
        self.cluster.restart_scheduler(self.before)  # the module's extender again
        if self.loop is not None and self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(30)


def test_a_bind_whose_answer_was_lost_is_read_back_and_keeps_its_reservation(
        kube_cluster: LocalCluster, namespace: str, gpu_nodes: Any,
        devices: Callable[..., str]) -> None:
    node = gpu_nodes("lost", gpus=1).metadata.name
    name = devices(node, 0, total=40 * GIB)
    core = client.CoreV1Api(kube_cluster.api_client())
    with LosingExtender(kube_cluster) as extender, \
            Sampler(kube_cluster, namespace, {name: 40 * GIB}) as sampler:
        create(kube_cluster, namespace, gpu_pod("lost-a", "24Gi"))
        wait_for(lambda: core.read_namespaced_pod("lost-a", namespace).spec.node_name == node,
                 timeout=60, what="the pod bound (its Binding's answer lost)")
        assert extender.client is not None and len(extender.client.lost) == 1
        # The extender read the pod back and answered kube-scheduler with success: no failed
        # bind was reported, and no second Binding was tried.
        assert not [m for m in events(core, namespace, "lost-a", "FailedScheduling")]
        assert [m for m in events(core, namespace, "lost-a", "Scheduled")]
        # The reservation is held: a second pod that needs the same memory waits.
        create(kube_cluster, namespace, gpu_pod("b", "24Gi"))
        wait_for(lambda: any("InsufficientMemory" in m
                             for m in events(core, namespace, "b", "FailedScheduling")),
                 timeout=60, what="the second pod refused for the memory the first holds")
        assert core.read_namespaced_pod("b", namespace).spec.node_name is None
        # Gone, the first pod's memory is free again.
        uid = core.read_namespaced_pod("lost-a", namespace).metadata.uid
        assert uid in extender.view.reservations
        core.delete_namespaced_pod("lost-a", namespace)
        wait_for(lambda: uid not in extender.view.reservations, timeout=60,
                 what="the first pod's reservation released once it is gone")
    sampler.assert_never_over()


def test_a_terminating_pod_keeps_its_reservation_until_it_is_gone(
        kube_cluster: LocalCluster, extender: ExtenderProcess, namespace: str,
        gpu_nodes: Any, devices: Callable[..., str]) -> None:
    node = gpu_nodes("term", gpus=1).metadata.name
    name = devices(node, 0, total=40 * GIB)
    api = kube_cluster.api_client()
    core = client.CoreV1Api(api)
    with Sampler(kube_cluster, namespace, {name: 40 * GIB}) as sampler:
        create(kube_cluster, namespace, gpu_pod("holder", "24Gi", finalizers=[HOLD]))
        wait_for(lambda: core.read_namespaced_pod("holder", namespace).status.phase == "Running",
                 timeout=60, what="the holder running")
        core.delete_namespaced_pod("holder", namespace)  # Terminating: the finalizer keeps it
        wait_for(lambda: core.read_namespaced_pod("holder", namespace).metadata
                 .deletion_timestamp is not None, timeout=30, what="the holder Terminating")
        create(kube_cluster, namespace, gpu_pod("next", "24Gi"))
        wait_for(lambda: any("InsufficientMemory" in m
                             for m in events(core, namespace, "next", "FailedScheduling")),
                 timeout=60, what="the next pod refused while the holder terminates")
        assert core.read_namespaced_pod("next", namespace).spec.node_name is None
        def next_pod() -> dict[str, Any]:
            return dict(api.sanitize_for_serialization(core.read_namespaced_pod("next",
                                                                                namespace)))

        assert not extender.passes(next_pod(), node)
        core.patch_namespaced_pod("holder", namespace, {"metadata": {"finalizers": None}})
        wait_for(lambda: extender.passes(next_pod(), node), timeout=60,
                 what="the holder's memory free once it is gone")
        # kube-scheduler uses it: "next" (retried) or a pod created now, one of them only.
        create(kube_cluster, namespace, gpu_pod("after", "24Gi"))
        wait_for(lambda: len(bound(core, namespace)) == 1, timeout=60,
                 what="one pod bound to the freed memory")
    sampler.assert_never_over()
    assert len(bound(core, namespace)) == 1


@pytest.mark.parametrize("racing", [
    100, pytest.param(500, marks=pytest.mark.chaos, id="500")])
def test_extender_sigkill_during_binds_never_overcommits(
        kube_cluster: LocalCluster, extender: ExtenderProcess, namespace: str,
        gpu_nodes: Any, devices: Callable[..., str], racing: int) -> None:
    """``racing`` pods of 4 GiB race for devices of 40 GiB with room for 80 % of them; the
    extender is killed with SIGKILL three times while they bind and restarted each time."""
    fits = racing * 8 // 10
    count = max(1, fits // 10)  # devices of room for 10 pods each
    totals: dict[str, int] = {}
    for n in range((count + 1) // 2):
        node = gpu_nodes(f"kill{n}", gpus=2).metadata.name
        for i in range(min(2, count - 2 * n)):
            totals[devices(node, i, total=40 * GIB)] = 40 * GIB
    core = client.CoreV1Api(kube_cluster.api_client())
    with Sampler(kube_cluster, namespace, totals) as sampler:
        for i in range(racing):
            core.create_namespaced_pod(namespace, gpu_pod(f"race-{i:03d}", "4Gi"))
        for share in (0.2, 0.45, 0.7):
            wait_for(lambda share=share: len(sampler.held()) > 0 and
                     sum(sampler.held().values()) >= share * fits * 4 * GIB,
                     timeout=300, interval=0.1, what=f"{share:.0%} of the room bound")
            extender.kill()
            extender.start()
        wait_for(lambda: sum(sampler.held().values()) >= fits * 4 * GIB, timeout=600,
                 what=f"{fits} pods bound")
    sampler.assert_never_over()
    assert len(bound(core, namespace)) == fits
