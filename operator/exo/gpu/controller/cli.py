"""``exo-gpu controller``, ``exo-gpu plan`` and ``exo-gpu top``.

- ``controller`` runs the operator (Lease, kopf, resync and device-health loops) with an informer
  feeding the cluster view and the view's gauges on ``/metrics``. The extender can be served from
  the same view by a composition module calling :func:`exo.gpu.controller.runner.run_operator`.
- ``plan -f workload.yaml`` reads the devices and bound pods from the API once, builds the same
  view the controller has, and prints the placement the policy would make. It writes nothing.
- ``top`` prints every device with its live figures and score, then the cluster aggregate.

The table formatting is pure (:func:`format_table`, :func:`device_rows`, :func:`plan_rows`) so
that it is tested without a cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..fit import FitRequest
from ..k8s.models import GROUP, VERSION
from ..k8s.view import ClusterView
from ..policy import DEFAULT_POLICY, SelectionPolicy
from ..quantity import format_bytes
from .planning import Plan


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns padded to their widest cell, like ``kubectl get``."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def device_rows(view: ClusterView, now: float) -> list[list[object]]:
    """One row per device: name, node, vendor, model, memory, util, temp, score, state (Ready,
    or why the core would not place anything there now)."""
    rows: list[list[object]] = []
    anything = FitRequest()
    with view.lock:
        for name in sorted(view.devices):
            device = view.devices[name]
            state = view.state.device(name)
            metrics = device.status.metrics if device.status else None
            used = metrics.memory_used_bytes if metrics else None
            total = device.spec.memory_total_bytes
            verdict = view.state.fit(name, anything, now) if state is not None else None
            rows.append([
                name, device.spec.node, device.spec.vendor.value, device.spec.model,
                f"{(used or 0) / 2**30:.1f}/{total / 2**30:.1f} GiB" if used is not None
                else f"-/{total / 2**30:.1f} GiB",
                f"{metrics.compute_utilization_percent:.0f}%" if metrics else "-",
                f"{metrics.temperature_celsius:.0f}C"
                if metrics and metrics.temperature_celsius is not None else "-",
                f"{state.score:.2f}" if state is not None and metrics else "-",
                "Ready" if verdict is None or verdict.reason is None else verdict.reason.value,
            ])
    return rows


DEVICE_HEADERS = ("DEVICE", "NODE", "VENDOR", "MODEL", "MEMORY", "UTIL", "TEMP", "SCORE", "STATE")
PLAN_HEADERS = ("DEVICE", "NODE", "TASKS", "COUNT", "SCORE", "MEMORY", "COMPUTE", "THERMAL")


def plan_rows(plan: Plan) -> list[list[object]]:
    return [[p.device, p.node, _short(p.tasks_text), len(p.tasks), f"{p.score:.3f}",
             f"{p.memory:.3f}", f"{p.compute:.3f}", f"{p.thermal:.3f}"]
            for p in plan.placements]


def aggregate_lines(view: ClusterView) -> list[str]:
    with view.lock:
        agg = view.manager.get_aggregated_metrics()
    vendors = ", ".join(f"{v} {n}" for v, n in sorted(agg["devices_by_vendor"].items()) if n)
    return [
        f"devices: {agg['device_count']} ({agg['reporting_device_count']} reporting)"
        + (f"; {vendors}" if vendors else ""),
        f"memory: {format_bytes(agg['used_memory_bytes'])} used, "
        f"{format_bytes(agg['free_memory_bytes'])} free of "
        f"{format_bytes(agg['total_memory_bytes'])}",
        f"utilization: {agg['average_utilization_percent']:.1f}% average; power "
        f"{agg['total_power_watts']:.0f} W" + (
            f"; hottest {agg['max_temperature_celsius']:.0f}C"
            if agg.get("max_temperature_celsius") is not None else ""),
    ]


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_view(api_client: Any, policy: SelectionPolicy = DEFAULT_POLICY,
              pods: bool = True) -> ClusterView:
    """A one-shot view from the API: every GPUDevice and (for reservations) every pod."""
    from kubernetes import client

    view = ClusterView(policy=policy)
    custom = client.CustomObjectsApi(api_client)
    response = custom.list_cluster_custom_object(GROUP, VERSION, "gpudevices",
                                                 _preload_content=False)
    for item in json.loads(response.data).get("items") or []:
        view.apply_device(item)
    if pods:
        core = client.CoreV1Api(api_client)
        listing = core.list_pod_for_all_namespaces(_preload_content=False)
        view.resync_pods(json.loads(listing.data).get("items") or [])
    return view


def _client(kubeconfig: str | None) -> Any:
    from .runner import _api_client

    try:
        return _api_client(kubeconfig)
    except Exception as error:
        raise click.ClickException(f"cannot load the Kubernetes configuration: {error}") from None


_KUBECONFIG = click.option("--kubeconfig", envvar="KUBECONFIG", default=None,
                           help="Kubeconfig file (default: $KUBECONFIG, else in-cluster).")
_OUTPUT = click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
                       show_default=True)


@click.command("plan")
@click.option("--filename", "-f", "filename", required=True,
              type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
              help="GPUWorkload manifest (YAML or JSON; '-' reads stdin).")
@_KUBECONFIG
@_OUTPUT
def plan_command(filename: Path, kubeconfig: str | None, output: str) -> None:
    """Print where the policy would place a GPUWorkload now, without writing anything."""
    import time

    import yaml

    from .planning import parse_workload, plan

    text = sys.stdin.read() if str(filename) == "-" else filename.read_text(encoding="utf-8")
    try:
        docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    except yaml.YAMLError as error:
        raise click.ClickException(f"{filename}: not YAML: {error}") from None
    docs = [d for d in docs if d.get("kind") == "GPUWorkload"]
    if not docs:
        raise click.ClickException(f"{filename}: no GPUWorkload in the file")
    view = load_view(_client(kubeconfig))
    failed = False
    results = []
    for doc in docs:
        doc.setdefault("metadata", {}).setdefault("name", "unnamed")
        workload, invalid = parse_workload(doc)
        result = invalid if workload is None else plan(workload, view)
        assert result is not None
        failed = failed or not result.placed
        results.append((doc["metadata"]["name"], result))
    if output == "json":
        click.echo(json.dumps([{
            "name": name, "phase": r.phase, "reason": r.reason, "message": r.message,
            "placements": [p.to_status().to_api() for p in r.placements],
            "excluded": dict(r.excluded)} for name, r in results], indent=2))
    else:
        for name, result in results:
            click.echo(f"{name}: {result.phase} ({result.reason}): {result.message}")
            if result.placements:
                click.echo(format_table(PLAN_HEADERS, plan_rows(result)))
            for device, why in sorted(result.excluded.items()):
                click.echo(f"  not used: {device}: {why}")
        click.echo(f"(as of {time.strftime('%H:%M:%S')}; nothing was written)")
    if failed:
        sys.exit(1)


@click.command("top")
@_KUBECONFIG
@_OUTPUT
@click.option("--sort", type=click.Choice(["name", "score"]), default="name", show_default=True)
def top_command(kubeconfig: str | None, output: str, sort: str) -> None:
    """Print every GPUDevice with its live figures and score, then the cluster aggregate."""
    import time

    view = load_view(_client(kubeconfig))
    rows = device_rows(view, time.time())
    if sort == "score":
        rows.sort(key=lambda r: (-(float(str(r[7])) if r[7] != "-" else -1.0), str(r[0])))
    if output == "json":
        with view.lock:
            agg = view.manager.get_aggregated_metrics()
        click.echo(json.dumps({"devices": [dict(zip(DEVICE_HEADERS, map(str, r), strict=True))
                                           for r in rows], "aggregate": agg}, indent=2))
        return
    click.echo(format_table(DEVICE_HEADERS, rows) if rows else "no GPUDevices")
    click.echo("")
    for line in aggregate_lines(view):
        click.echo(line)


@click.command("controller")
@_KUBECONFIG
@click.option("--metrics-port", default=8080, show_default=True, type=int,
              help="Serve /metrics here (0: off).")
@click.option("--liveness", default="http://0.0.0.0:8081/healthz", show_default=True,
              help="kopf liveness endpoint URL ('' to disable).")
@click.option("--namespace", "namespaces", multiple=True,
              help="Watch GPUWorkloads only in these namespaces (default: all).")
@click.option("--leader-elect/--no-leader-elect", default=True, show_default=True,
              help="Act only while holding the Lease (several replicas: one acts).")
@click.option("--lease-namespace", envvar="POD_NAMESPACE", default="default", show_default=True)
@click.option("--lease-name", default="exo-gpu-controller", show_default=True)
@click.option("--resync-interval", default=15.0, show_default=True, type=float,
              help="Seconds between revisits of every workload (device failures, retries).")
@click.option("--health-interval", default=10.0, show_default=True, type=float,
              help="Seconds between device heartbeat checks.")
@click.option("--reporting-interval", default=DEFAULT_POLICY.reporting_interval_seconds,
              show_default=True, type=click.FloatRange(5, 3600),
              help="The exporters' --report-interval (their heartbeat): a device is stale after "
                   "3 of them without a write.")
@click.option("--history-size", default=2, show_default=True, type=click.IntRange(min=1),
              help="Metrics samples kept per device in the view (2-3 KiB each); the "
                   "decisions use the latest.")
@click.option("--log-level", default="INFO", show_default=True)
def command(**options: Any) -> None:
    """Run the GPUWorkload controller (kopf operator) with its cluster view and /metrics."""
    run(ControllerOptions(**options))


@dataclass(frozen=True)
class ControllerOptions:
    """The options of ``exo-gpu controller``."""

    kubeconfig: str | None
    metrics_port: int
    liveness: str
    namespaces: tuple[str, ...]
    leader_elect: bool
    lease_namespace: str
    lease_name: str
    resync_interval: float
    health_interval: float
    reporting_interval: float
    history_size: int
    log_level: str

    def policy(self) -> SelectionPolicy:
        """The selection policy: staleness derives from ``--reporting-interval``."""
        return SelectionPolicy(reporting_interval_seconds=self.reporting_interval)


#: Something else served from the controller's process and view (the scheduler extender):
#: called with the view, the API client and ``ready()`` (view synced and this replica the
#: leader) once the view is synced; returns the coroutine function that stops it.
Sidecar = Callable[[ClusterView, Any, Callable[[], bool]],
                   Awaitable[Callable[[], Awaitable[None]]]]


def run(options: ControllerOptions, sidecar: Sidecar | None = None,
        collectors: Sequence[Any] = ()) -> None:
    """Run the controller until SIGINT/SIGTERM; with ``sidecar``, serve it from the same view.

    ``collectors`` (Prometheus collectors, e.g. the sidecar's metrics) are served with the
    controller's on ``--metrics-port``.
    """
    from exo.gpu.k8s.informer import Informer, freeze_long_lived

    from .api import LeaseElector
    from .controller import Controller, ControllerConfig
    from .metrics import build_registry, serve
    from .runner import LeaderSettings, make_view, run_operator

    logging.basicConfig(level=options.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if min(options.resync_interval, options.health_interval, options.reporting_interval) <= 0:
        raise click.BadParameter("intervals must be positive")
    # kopf logs every handler run at INFO; only problems are worth a line per object.
    logging.getLogger("kopf.objects").setLevel(max(logging.WARNING, logging.root.level))
    api_client = _client(options.kubeconfig)
    view = make_view(options.policy(), options.history_size)
    current: list[Controller] = []
    electors: list[LeaseElector] = []

    def phases() -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in list(current[-1].written.values()) if current else []:
            phase = str(status.get("phase"))
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    if options.metrics_port:
        registry = build_registry(view, phases)
        for collector in collectors:
            registry.register(collector)
        serve(registry, options.metrics_port)
    stop = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        informer = Informer(view, api_client).start()
        await asyncio.to_thread(informer.wait_synced, 120.0)
        freeze_long_lived()

        def ready() -> bool:
            leader = not options.leader_elect or (bool(electors) and electors[-1].is_leader)
            return informer.synced.is_set() and leader

        stop_sidecar = await sidecar(view, api_client, ready) if sidecar else None
        try:
            await run_operator(
                view, api_client=api_client, namespaces=list(options.namespaces) or None,
                liveness=options.liveness or None, stop_flag=stop, informer=False,
                leader=LeaderSettings(enabled=options.leader_elect,
                                      namespace=options.lease_namespace,
                                      name=options.lease_name),
                config=ControllerConfig(resync_interval=options.resync_interval,
                                        health_interval=options.health_interval),
                on_controller=lambda controller: current.__setitem__(slice(None), [controller]),
                on_elector=electors.append)
        finally:
            informer.stop()
            if stop_sidecar is not None:
                await stop_sidecar()

    asyncio.run(main())


__all__ = ["command", "format_table", "load_view", "plan_command", "top_command"]
