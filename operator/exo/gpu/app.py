"""Composition: the controller and the scheduler extender in one process, over one view.

The controller and the extender packages do not import each other (an import-linter contract);
this module is where they meet. ``exo-gpu controller`` runs the kopf operator and, unless
``--extender-port 0``, serves kube-scheduler's extender verbs from the same ``ClusterView``: one
list-and-watch of devices and pods feeds both, and reservations made at bind are seen by the
planner at once. The extender answers (``/readyz`` 200, verbs served) only while the view is
synced and this replica holds the controller's Lease, so a Service in front of several replicas
routes kube-scheduler to the leader alone and two ledgers never hand out the same memory.

The extender serves mutual TLS (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``) unless
``--plain-http`` says otherwise, and its metrics are served with the controller's on
``--metrics-port``: the extender port is for kube-scheduler alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import click
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exo.gpu.controller import cli as controller_cli
from exo.gpu.extender.cli import tls_from_options, tls_params
from exo.gpu.extender.judged import SCHEDULER_NAME
from exo.gpu.extender.metrics import ExtenderMetrics
from exo.gpu.extender.server import ServingTLS
from exo.gpu.k8s.view import ClusterView


class _Forward(Collector):
    """Another registry's metrics, collected into the controller's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


def extender_sidecar(host: str, port: int, tls: ServingTLS | None, kubeconfig: str | None,
                     metrics: ExtenderMetrics, max_body_bytes: int,
                     scheduler_names: tuple[str, ...] = (SCHEDULER_NAME,)
                     ) -> controller_cli.Sidecar:
    """Serve the extender from the controller's view (see ``controller.cli.Sidecar``);
    ``scheduler_names``: whose pods it binds (``--scheduler-name``)."""

    async def start(view: ClusterView, api_client: Any, ready: Callable[[], bool]
                    ) -> Callable[[], Awaitable[None]]:
        from exo.gpu.extender.bind import Binder
        from exo.gpu.extender.cli import bind_client
        from exo.gpu.extender.preemptor import Preemptor
        from exo.gpu.extender.server import ExtenderServer, start_site

        binder = Binder(view, bind_client(kubeconfig))
        server = ExtenderServer(view, binder, metrics, ready=ready, max_body_bytes=max_body_bytes,
                                scheduler_names=scheduler_names)
        runner = await start_site(server.app(), host, port, tls)
        stopping = asyncio.Event()
        preempting = asyncio.get_running_loop().create_task(
            Preemptor(view, server.judged, binder.client, ready=ready).run(stopping))

        async def stop() -> None:
            stopping.set()
            await preempting
            await runner.cleanup()
            await binder.close()

        return stop

    return start


def _run(extender_port: int, extender_host: str, tls_cert: str | None, tls_key: str | None,
         tls_client_ca: str | None, tls_client_name: tuple[str, ...], plain_http: bool,
         max_request_bytes: int, scheduler_name: tuple[str, ...], **options: Any) -> None:
    """Run the GPUWorkload controller and, on --extender-port, the scheduler extender."""
    sidecar, collectors = None, []
    if extender_port:
        metrics = ExtenderMetrics()
        tls = tls_from_options(tls_cert, tls_key, tls_client_ca, tls_client_name, plain_http)
        sidecar = extender_sidecar(extender_host, extender_port, tls,
                                   options.get("kubeconfig"), metrics, max_request_bytes,
                                   scheduler_name)
        collectors.append(_Forward(metrics.registry))
    rebalance = controller_cli.rebalance_config(options)
    controller_cli.run(controller_cli.ControllerOptions(rebalance=rebalance, **options), sidecar,
                       collectors)


controller_command = click.Command(
    name="controller",
    callback=_run,
    help=_run.__doc__,
    params=[
        *controller_cli.command.params,
        click.Option(["--extender-port"], type=click.IntRange(0, 65535), default=8888,
                     show_default=True,
                     help="Serve the scheduler extender here, from the controller's view "
                          "(0: do not serve it)."),
        click.Option(["--extender-host"], default="0.0.0.0", show_default=True),
        *tls_params(),
    ],
)
