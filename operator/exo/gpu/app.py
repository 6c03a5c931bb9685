"""Composition: the controller and the scheduler extender in one process, over one view.

The controller and the extender packages do not import each other (an import-linter contract);
this module is where they meet. ``exo-gpu controller`` runs the kopf operator and, unless
``--extender-port 0``, serves kube-scheduler's extender verbs from the same ``ClusterView``: one
list-and-watch of devices and pods feeds both, and reservations made at bind are seen by the
planner at once. The extender answers (``/readyz`` 200, verbs served) only while the view is
synced and this replica holds the controller's Lease, so a Service in front of several replicas
routes kube-scheduler to the leader alone and two ledgers never hand out the same memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click

from exo.gpu.controller import cli as controller_cli
from exo.gpu.k8s.view import ClusterView


def extender_sidecar(host: str, port: int, tls_cert: str | None, tls_key: str | None,
                     kubeconfig: str | None) -> controller_cli.Sidecar:
    """Serve the extender from the controller's view (see ``controller.cli.Sidecar``)."""

    async def start(view: ClusterView, api_client: Any, ready: Callable[[], bool]
                    ) -> Callable[[], Awaitable[None]]:
        from exo.gpu.extender.bind import Binder
        from exo.gpu.extender.cli import bind_client
        from exo.gpu.extender.server import ExtenderServer, ssl_context, start_site

        binder = Binder(view, bind_client(kubeconfig))
        server = ExtenderServer(view, binder, ready=ready)
        runner = await start_site(server.app(), host, port, ssl_context(tls_cert, tls_key))

        async def stop() -> None:
            await runner.cleanup()
            await binder.close()

        return stop

    return start


def _run(extender_port: int, extender_host: str, tls_cert: str | None, tls_key: str | None,
         **options: Any) -> None:
    """Run the GPUWorkload controller and, on --extender-port, the scheduler extender."""
    sidecar = extender_sidecar(extender_host, extender_port, tls_cert, tls_key,
                               options.get("kubeconfig")) if extender_port else None
    controller_cli.run(controller_cli.ControllerOptions(**options), sidecar)


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
        click.Option(["--tls-cert"], default=None,
                     help="Serve the extender over HTTPS with this certificate (PEM)."),
        click.Option(["--tls-key"], default=None, help="Private key of --tls-cert (PEM)."),
    ],
)
