"""Run the controller's kopf operator with production settings and a leader Lease.

``run_operator(view, ...)`` is what ``exo-gpu controller`` and the composition module (controller
and extender in one process, sharing one ``ClusterView``) call. It

- campaigns for a ``coordination.k8s.io/v1`` Lease (:class:`~.api.LeaseElector`) and starts kopf
  only while it holds it; losing the Lease stops kopf (and the resync/health loops), and the
  replica campaigns again. kopf's own peering is not used: it is not a lease and has no fencing
  (notes/field-lessons.md), so kopf runs ``standalone``; every write path also checks
  ``is_leader`` before acting;
- sets kopf's watch timeouts (a watch that silently stops is kopf's most reported failure), keeps
  its progress and diff-base in annotations under ``gpu.exo.dev/`` (status holds only the
  controller's own fields), and posts only WARNING and above of its log as Events.

The view itself is fed by :class:`exo.gpu.k8s.informer.Informer` (started by the caller, or by
``run_operator`` when ``informer=True``), never by an API call on a decision path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..k8s.view import ClusterView
from ..policy import DEFAULT_POLICY, SelectionPolicy
from .api import ControllerAPI, LeaseElector
from .controller import Controller, ControllerConfig
from .handlers import build_registry
from .pods import LABEL_WORKLOAD

log = logging.getLogger(__name__)

WATCH_SERVER_TIMEOUT_S = 300
WATCH_CLIENT_TIMEOUT_S = 330


@dataclass
class LeaderSettings:
    """Where the Lease lives and how long it lasts. ``enabled=False``: act without one."""

    enabled: bool = True
    namespace: str = "default"
    name: str = "exo-gpu-controller"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}")
    lease_duration: float = 15.0
    renew_interval: float = 5.0
    renew_margin: float = 3.0


#: Samples kept per device by the controller's view. Placement reads only the latest sample;
#: the history is for explanations. Each sample is a pydantic model of about 1.2 KiB, so the
#: core's default (300) would cost ~350 KiB per device, 3.4 GiB at 10,000 devices.
DEFAULT_HISTORY_SIZE = 2


def make_view(policy: SelectionPolicy | None = None,
              history_size: int = DEFAULT_HISTORY_SIZE) -> ClusterView:
    """A ``ClusterView`` whose manager keeps ``history_size`` samples per device."""
    return ClusterView(policy=policy or DEFAULT_POLICY, history_size=history_size)


def settings() -> Any:
    """kopf settings for production use."""
    import kopf

    s = kopf.OperatorSettings()
    s.watching.server_timeout = WATCH_SERVER_TIMEOUT_S
    s.watching.client_timeout = WATCH_CLIENT_TIMEOUT_S
    s.watching.connect_timeout = 30
    s.networking.request_timeout = 60
    s.posting.level = logging.WARNING
    s.posting.reporting_component = "exo-gpu-controller"
    # The handlers are level-triggered event handlers: kopf stores no progress or diff-base and
    # adds no finalizer; should one be added later, keep its state out of status.
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="gpu.exo.dev")
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="gpu.exo.dev", key="last-handled-configuration")
    s.persistence.finalizer = "gpu.exo.dev/controller"
    s.peering.standalone = True
    s.execution.max_workers = 16
    # Only controller-made pods reach kopf: the API server filters the pod watch.
    s.watching.label_selectors["", "v1", "pods"] = LABEL_WORKLOAD
    return s


def build(view: ClusterView, api_client: Any, *, config: ControllerConfig | None = None,
          is_leader: Callable[[], bool] | None = None) -> tuple[Controller, Any]:
    """The controller and its kopf registry over ``view`` (for composition and tests)."""
    api = ControllerAPI(api_client, instance=os.environ.get("HOSTNAME", "controller"))
    controller = Controller(view=view, api=api, config=config or ControllerConfig(),
                            is_leader=is_leader or (lambda: True), async_events=True)
    return controller, build_registry(controller)


async def run_operator(
    view: ClusterView,
    *,
    api_client: Any = None,
    kubeconfig: str | None = None,
    namespaces: list[str] | None = None,
    liveness: str | None = None,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
    leader: LeaderSettings | None = None,
    config: ControllerConfig | None = None,
    informer: bool = False,
    on_controller: Callable[[Controller], None] | None = None,
    on_elector: Callable[[LeaseElector], None] | None = None,
) -> None:
    """Run until ``stop_flag`` is set: campaign for the Lease, run kopf while holding it.

    ``namespaces``: watch only these (default: cluster-wide). ``liveness``: kopf's liveness
    endpoint, e.g. ``http://0.0.0.0:8080/healthz``. ``ready_flag`` is set once kopf runs as the
    leader. ``informer=True`` also feeds ``view`` from GPUDevice and Pod watches here.
    ``on_controller`` receives the :class:`Controller` each time one starts (tests, metrics);
    ``on_elector`` the Lease elector once it campaigns (what else in the process must act only
    as the leader, such as the scheduler extender's binds, asks it).
    """
    import kopf

    api_client = api_client or _api_client(kubeconfig)
    leader = leader or LeaderSettings()
    feeder = None
    if informer:
        from ..k8s.informer import Informer

        feeder = Informer(view, api_client).start()
        await asyncio.to_thread(feeder.wait_synced, 60.0)
    elector: LeaseElector | None = None
    if leader.enabled:
        elector = LeaseElector(api_client, leader.namespace, leader.name, leader.identity,
                               lease_duration=leader.lease_duration,
                               renew_interval=leader.renew_interval,
                               renew_margin=leader.renew_margin).start()
        if on_elector is not None:
            on_elector(elector)

    def stopping() -> bool:
        return stop_flag is not None and stop_flag.is_set()

    try:
        while not stopping():
            if elector is not None:
                while not stopping() and not elector.is_leader:
                    await asyncio.sleep(0.2)
                if stopping():
                    break
            controller, registry = build(
                view, api_client, config=config,
                is_leader=(lambda: elector.is_leader) if elector is not None else None)
            if on_controller is not None:
                on_controller(controller)
            kopf_stop = asyncio.Event()
            watcher = asyncio.create_task(_watch_stop(kopf_stop, stopping, elector))
            try:
                await kopf.operator(
                    registry=registry, settings=settings(), memo=kopf.Memo(controller=controller),
                    standalone=True, clusterwide=not namespaces, namespaces=namespaces or (),
                    liveness_endpoint=liveness, stop_flag=kopf_stop, ready_flag=ready_flag)
            finally:
                watcher.cancel()
                controller.stop_loops()
            if elector is None:
                break
            log.warning("controller stopped acting (Lease lost or stop requested)")
    finally:
        if elector is not None:
            await asyncio.to_thread(elector.stop)
        if feeder is not None:
            feeder.stop()


async def _watch_stop(kopf_stop: asyncio.Event, stopping: Callable[[], bool],
                      elector: LeaseElector | None) -> None:
    while True:
        if stopping() or (elector is not None and not elector.is_leader):
            kopf_stop.set()
            return
        await asyncio.sleep(0.2)


def _api_client(kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig or os.environ.get("KUBECONFIG") or not os.environ.get(
            "KUBERNETES_SERVICE_HOST"):
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)
