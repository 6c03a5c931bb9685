"""``exo-gpu extender``: the scheduler extender on its own (view, informer, HTTP server).

The controller process can serve the same handlers from its own view; this command is for
running the extender apart (and for tests of the extender alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import click

from exo.gpu.k8s.cli import domain_keys, domain_options
from exo.gpu.policy import DEFAULT_POLICY, SelectionPolicy
from exo.gpu.topology import DEFAULT_DOMAIN_KEYS, DomainKeys

from .judged import SCHEDULER_NAME
from .server import MAX_BODY_BYTES, ServingTLS, serving_tls


async def serve(kubeconfig: str | None, host: str, port: int, tls: ServingTLS | None,
                stop: asyncio.Event | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                reporting_interval: float = DEFAULT_POLICY.reporting_interval_seconds,
                domain_keys: DomainKeys = DEFAULT_DOMAIN_KEYS,
                scheduler_names: tuple[str, ...] = (SCHEDULER_NAME,)) -> None:
    """Serve the extender until ``stop``; ``tls`` None is plain HTTP (asked for by name)."""
    from kubernetes import client, config

    from exo.gpu.k8s.informer import Informer
    from exo.gpu.k8s.view import ClusterView

    from .bind import Binder
    from .preemptor import Preemptor
    from .server import ExtenderServer, start_site

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    api = client.ApiClient(configuration)
    view = ClusterView(policy=SelectionPolicy(reporting_interval_seconds=reporting_interval),
                       domain_keys=domain_keys)
    informer = Informer(view, api).start()
    binder = Binder(view, bind_client(kubeconfig))
    server = ExtenderServer(view, binder, ready=informer.synced.is_set,
                            max_body_bytes=max_body_bytes, scheduler_names=scheduler_names)
    runner = await start_site(server.app(), host, port, tls)
    stop = stop or asyncio.Event()
    preempting = asyncio.get_running_loop().create_task(
        Preemptor(view, server.judged, binder.client, ready=informer.synced.is_set).run(stop))
    logging.getLogger(__name__).info("extender serving %s on %s:%d",
                                     "mutual TLS" if tls else "plain HTTP", host, port)
    freezer = asyncio.get_running_loop().create_task(_freeze_after_sync(informer))
    if threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        freezer.cancel()
        preempting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await preempting
        informer.stop()
        await runner.cleanup()
        await binder.close()


def bind_client(kubeconfig: str | None) -> Any:
    """The asynchronous API client binds go through (16 connections: binds run concurrently)."""
    from exo.gpu.k8s.aioclient import AsyncKubeClient, KubeConfig

    config = KubeConfig.from_kubeconfig(Path(kubeconfig)) if kubeconfig else \
        KubeConfig.in_cluster()
    return AsyncKubeClient(config, connections=16)


async def _freeze_after_sync(informer: Any) -> None:
    from exo.gpu.k8s.informer import freeze_long_lived

    while not informer.synced.is_set():
        await asyncio.sleep(0.1)
    freeze_long_lived()


#: The extender's transport options, shared by ``exo-gpu extender`` and ``exo-gpu controller``.
_TLS_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--tls-cert",), {"default": None, "help": "The extender's serving certificate (PEM)."}),
    (("--tls-key",), {"default": None, "help": "Private key of --tls-cert (PEM)."}),
    (("--tls-client-ca",), {
        "default": None,
        "help": "CA whose client certificates may call the extender (kube-scheduler's); "
                "callers without one get only /healthz and /readyz."}),
    (("--tls-client-name",), {
        "multiple": True,
        "help": "Admit only client certificates with this subject common name (repeatable; "
                "default: any the client CA signed)."}),
    (("--plain-http",), {
        "is_flag": True, "default": False,
        "help": "Serve the extender over unauthenticated HTTP instead of mutual TLS."}),
    (("--max-request-bytes",), {
        "type": click.IntRange(min=1024), "default": MAX_BODY_BYTES, "show_default": True,
        "help": "Largest extender request body; larger ones are answered 413."}),
    (("--scheduler-name",), {
        "multiple": True, "default": (SCHEDULER_NAME,), "show_default": True,
        "help": "spec.schedulerName of the pods the extender binds (repeatable); a bind of "
                "any other pod is refused. With your own kube-scheduler extended, its name "
                "(default-scheduler)."}),
]


def tls_params() -> list[click.Option]:
    """The transport options as click parameters (for a ``click.Command(params=...)``)."""
    return [click.Option(list(decls), **attrs) for decls, attrs in _TLS_OPTIONS]


def tls_options(function: Any) -> Any:
    """Decorate a click command with the transport options."""
    for decls, attrs in reversed(_TLS_OPTIONS):
        function = click.option(*decls, **attrs)(function)
    return function


def tls_from_options(tls_cert: str | None, tls_key: str | None, tls_client_ca: str | None,
                     tls_client_name: tuple[str, ...], plain_http: bool) -> ServingTLS | None:
    """The flags' TLS, or a usage error naming the flag; files that cannot be read fail here."""
    import ssl

    try:
        return serving_tls(tls_cert, tls_key, tls_client_ca, plain_http, tls_client_name)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    except (OSError, ssl.SSLError) as error:
        raise click.BadParameter(f"cannot load the TLS files: {error}",
                                 param_hint="--tls-cert/--tls-key/--tls-client-ca") from None


@click.command("extender")
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None,
              help="Kubeconfig file; in-cluster configuration when absent.")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8888, show_default=True, type=int)
@tls_options
@click.option("--reporting-interval", default=DEFAULT_POLICY.reporting_interval_seconds,
              show_default=True, type=click.FloatRange(5, 3600),
              help="The exporters' --report-interval: a device is stale after 3 of them "
                   "without a write.")
@domain_options
@click.option("--log-level", default="INFO", show_default=True)
def command(kubeconfig: str | None, host: str, port: int, tls_cert: str | None,
            tls_key: str | None, tls_client_ca: str | None, tls_client_name: tuple[str, ...],
            plain_http: bool, max_request_bytes: int, scheduler_name: tuple[str, ...],
            reporting_interval: float, rack_label: str, block_label: str,
            log_level: str) -> None:
    """Serve kube-scheduler's extender verbs (filter, prioritize, bind) for GPU pods."""
    tls = tls_from_options(tls_cert, tls_key, tls_client_ca, tls_client_name, plain_http)
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(kubeconfig, host, port, tls, max_body_bytes=max_request_bytes,
                      reporting_interval=reporting_interval,
                      domain_keys=domain_keys(rack_label, block_label),
                      scheduler_names=scheduler_name))
