"""The controller and the extender over one cluster view, as ``exo-gpu controller`` runs them,
on a thread of the calling process: for tests and local runs against a :class:`LocalCluster`.

The extender serves mutual TLS with the cluster's PKI and binds the pods of the local cluster's
kube-scheduler (:data:`SCHEDULER_NAME`), exactly as the installed sidecar does.
"""

from __future__ import annotations

import asyncio
import threading

from ..app import extender_sidecar
from ..controller.controller import Controller, ControllerConfig
from ..controller.runner import LeaderSettings, run_operator
from ..extender.metrics import ExtenderMetrics
from ..extender.server import MAX_BODY_BYTES, ServingTLS
from ..k8s.informer import Informer
from ..k8s.view import ClusterView
from ..selector import SelectionPolicy
from .cluster import SCHEDULER_NAME, LocalCluster, free_port, wait_for


class ControllerWithExtender:
    """The controller of ``namespace`` (no leader election) and its extender sidecar over one
    view; started on construction, stopped by :meth:`close`, which raises what the thread
    raised."""

    def __init__(self, cluster: LocalCluster, namespace: str, policy: SelectionPolicy,
                 config: ControllerConfig | None = None) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.config = config or ControllerConfig(resync_interval=1.0, health_interval=1.0)
        self.view = ClusterView(policy=policy)
        self.port = free_port()
        self.controllers: list[Controller] = []
        self.stop = threading.Event()
        self.serving = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(self.serving.is_set, timeout=60, what="the controller and its extender")
        if self.error is not None:
            raise self.error

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # surfaced by close()
            self.error = error
            self.serving.set()

    async def _main(self) -> None:
        api = self.cluster.api_client()
        informer = Informer(self.view, api).start()
        await asyncio.to_thread(informer.wait_synced, 60.0)
        pki = self.cluster.extender_pki()
        tls = ServingTLS(str(pki.server_cert), str(pki.server_key), str(pki.ca_cert))
        start = extender_sidecar("127.0.0.1", self.port, tls, self.cluster.kubeconfig,
                                 ExtenderMetrics(), MAX_BODY_BYTES, (SCHEDULER_NAME,))
        stop_extender = await start(self.view, api, informer.synced.is_set)
        self.serving.set()
        try:
            await run_operator(
                self.view, api_client=api, namespaces=[self.namespace], stop_flag=self.stop,
                informer=False, leader=LeaderSettings(enabled=False), config=self.config,
                on_controller=self.controllers.append)
        finally:
            informer.stop()
            await stop_extender()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the controller did not stop"
        assert self.error is None, self.error
