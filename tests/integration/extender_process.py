"""The extender as users run it, for the integration tests: ``exo-gpu extender`` in its own
process (SIGKILL-able), over mutual TLS, binding the pods of the local cluster's kube-scheduler;
and GPUDevices published as an exporter writes them."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exo.gpu.devcluster import LocalCluster, wait_for
from exo.gpu.devcluster.cluster import (
    SCHEDULER_NAME,
    extender_entry,
    free_port,
    scheduler_tls_config,
)
from exo.gpu.devcluster.nodes import publish_device
from exo.gpu.devcluster.pki import ExtenderPki


class ExtenderProcess:
    """``exo-gpu extender`` as its own process, over mutual TLS, binding the pods of this
    cluster's kube-scheduler; SIGKILL-able."""

    def __init__(self, cluster: LocalCluster, log: Path) -> None:
        self.cluster, self.log, self.port = cluster, log, free_port()
        self.pki: ExtenderPki = cluster.extender_pki()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> ExtenderProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "exo.gpu.cli", "extender",
                 "--kubeconfig", self.cluster.kubeconfig, "--host", "127.0.0.1",
                 "--port", str(self.port), "--tls-cert", str(self.pki.server_cert),
                 "--tls-key", str(self.pki.server_key), "--tls-client-ca", str(self.pki.ca_cert),
                 "--scheduler-name", SCHEDULER_NAME],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._ready, timeout=180, what="the extender process to be ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, \
            self.log.read_text()[-3000:]
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        with urllib.request.urlopen(f"{self.url}/readyz", timeout=2, context=context) as reply:
            return bool(reply.status == 200)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def post(self, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a verb as kube-scheduler would (its client certificate); the answer."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        request = urllib.request.Request(f"{self.url}/{verb}", data=json.dumps(body).encode(),
                                         method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:
            return dict(json.loads(reply.read()))

    def bind(self, pod: dict[str, Any], node: str) -> str:
        """``/bind``'s Error for ``pod`` (as the API returned it) on ``node``."""
        metadata = pod["metadata"]
        return str(self.post("bind", {"PodName": metadata["name"],
                                      "PodNamespace": metadata["namespace"],
                                      "PodUID": metadata["uid"], "Node": node})["Error"])

    def passes(self, pod: dict[str, Any], node: str) -> bool:
        """Whether ``/filter`` passes ``node`` for ``pod`` now."""
        answer = self.post("filter", {"Pod": pod, "NodeNames": [node]})
        return node in (answer.get("NodeNames") or [])


@pytest.fixture(scope="module")
def extender(kube_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[ExtenderProcess]:
    """The extender process, and kube-scheduler configured with it, for a module's tests."""
    running = ExtenderProcess(kube_cluster, tmp_path_factory.mktemp("extender") / "log").start()
    kube_cluster.restart_scheduler([extender_entry(running.url, scheduler_tls_config(running.pki))])
    yield running
    kube_cluster.restart_scheduler([])
    running.stop()


@pytest.fixture
def devices(kube_cluster: LocalCluster) -> Iterator[Callable[..., str]]:
    api = kube_cluster.api_client()
    made: list[str] = []

    def make(node: str, index: int, **metrics: Any) -> str:
        made.append(publish_device(api, node, index, **metrics))
        return made[-1]

    yield make
    for name in made:
        kube_cluster.kubectl("delete", "gpudevice", name, "--wait=false", check=False)


def create(cluster: LocalCluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    out = cluster.kubectl("create", "-n", namespace, "-o", "json", "-f", "-",
                          input=json.dumps(body))
    return dict(json.loads(out.stdout))


def events(core: Any, namespace: str, name: str, reason: str) -> list[str]:
    return [e.message for e in core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}").items if e.reason == reason]
